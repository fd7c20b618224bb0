"""From merged host variables to validated records: SSH, Pi-hole, and the VM's binding."""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable
from pathlib import Path

from pvepatch.inventory.fields import Fields
from pvepatch.inventory.model import (
    PIHOLE_GROUP,
    VMID_MAX,
    VMID_MIN,
    PiholeSpec,
    SnapshotVars,
    SSHSpec,
)
from pvepatch.inventory.problems import Problems

SSH_ARG_FIELDS = ("ansible_ssh_common_args", "ansible_ssh_extra_args")
BINDING_FIELDS = ("vmid", "proxmox_host")
Resolver = Callable[[str], str]


def known_hosts_from_args(f: Fields) -> tuple[tuple[Path, ...], str]:
    """UserKnownHostsFile given in ansible_ssh_common_args / ansible_ssh_extra_args, and where."""
    files: list[Path] = []
    origin = ""
    for name in SSH_ARG_FIELDS:
        raw = f.vars.get(name)
        if not raw:
            continue
        try:
            words = shlex.split(f.text(name))
        except ValueError as exc:
            raise f.error(name, f"cannot be parsed: {exc}") from exc
        options = [w[2:] if w.startswith("-o") and len(w) > 2 else w for w in words]
        for option in options:
            key, _, value = option.partition("=")
            if key.strip().lower() == "userknownhostsfile" and value:
                files += [Path(p).expanduser() for p in value.split()]
                origin = name
    return tuple(files), origin


def _key_file(f: Fields, base_dir: Path) -> Path | None:
    if f.vars.get("ansible_ssh_private_key_file") is None:
        return None
    key_path = Path(f.text("ansible_ssh_private_key_file")).expanduser()
    if not key_path.is_absolute():
        key_path = base_dir / key_path
    if not key_path.is_file():
        raise f.error("ansible_ssh_private_key_file", f"file not found: {key_path}")
    return key_path


def ssh_spec(f: Fields, base_dir: Path, problems: Problems) -> SSHSpec | None:
    """How to reach the host; None when a field is wrong (each problem recorded)."""
    before = len(problems.items)
    parts = {
        "address": problems.attempt(lambda: f.word("ansible_host", default=f.host)),
        "port": problems.attempt(lambda: f.integer("ansible_port", default=22)),
        "user": problems.attempt(lambda: f.word("ansible_user", default="root")),
        "key_file": problems.attempt(lambda: _key_file(f, base_dir)),
        "become": problems.attempt(lambda: f.boolean("ansible_become", default=False)),
    }
    known = problems.attempt(lambda: known_hosts_from_args(f))
    if len(problems.items) > before or known is None:
        return None
    return SSHSpec(**parts, known_hosts_files=known[0], known_hosts_field=known[1])  # type: ignore[arg-type]


def is_pihole(f: Fields, groups: set[str]) -> bool:
    return PIHOLE_GROUP in groups or f.boolean("pihole", default=False)


def _server(f: Fields, ssh: SSHSpec, resolve: Resolver) -> tuple[str, str]:
    """The DNS server (default: the SSH address) as (address, name as written)."""
    field = "pihole_dns_server" if f.vars.get("pihole_dns_server") is not None else "ansible_host"
    name = f.word("pihole_dns_server", default=ssh.address)
    try:
        return str(ipaddress.ip_address(name)), name
    except ValueError:
        pass
    try:
        return resolve(name), name
    except LookupError as exc:
        raise f.error(
            field,
            f"{name!r} (the Pi-hole's DNS server) does not resolve: {exc}; "
            "write its IP address as pihole_dns_server",
        ) from exc


def pihole_spec(
    f: Fields, ssh: SSHSpec, resolve: Resolver, problems: Problems
) -> PiholeSpec | None:
    """The DNS checks of a Pi-hole; None when a field is wrong (each problem recorded)."""
    before = len(problems.items)
    server = problems.attempt(lambda: _server(f, ssh, resolve))
    parts = {
        "port": problems.attempt(lambda: f.integer("pihole_dns_port", default=53)),
        "resolve_name": problems.attempt(lambda: f.word("pihole_resolve_name", default="pi.hole")),
        "blocked_name": problems.attempt(lambda: f.optional_word("pihole_blocked_name")),
        "service": problems.attempt(lambda: f.unit("pihole_service", default="pihole-FTL")),
        "protocol": problems.attempt(
            lambda: choice(f, "pihole_dns_protocol", ("udp", "tcp"), "udp")
        ),
    }
    if len(problems.items) > before or server is None:
        return None
    return PiholeSpec(server=server[0], server_name=server[1], **parts)  # type: ignore[arg-type]


REDUNDANCY_FIELD = "pvepatch_redundancy_group"
_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def redundancy_group(f: Fields) -> str | None:
    """The host's redundancy group: a name that is also a lock file name on the Proxmox host."""
    name = f.optional_word(REDUNDANCY_FIELD)
    if name is not None and not _GROUP_NAME.fullmatch(name):
        raise f.error(
            REDUNDANCY_FIELD,
            f"{name!r} is not a group name (letters, digits, '.', '_', '-'; at most 64)",
        )
    return name


PVE_NODE_FIELD = "pvepatch_pve_node"
_NODE_NAME = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")


def pve_node(f: Fields) -> str | None:
    """A Proxmox host's PVE node name, when the inventory name is not it (an FQDN's first
    label is taken by default)."""
    name = f.optional_word(PVE_NODE_FIELD)
    if name is not None and not _NODE_NAME.fullmatch(name):
        raise f.error(PVE_NODE_FIELD, f"{name!r} is not a Proxmox node name (a host name label)")
    if name is None and not _NODE_NAME.fullmatch(f.host.split(".")[0]):
        raise f.error(
            PVE_NODE_FIELD,
            f"is needed: the host name {f.host!r} does not start with a Proxmox node name",
        )
    return name


SNAPSHOT_FIELDS = ("pvepatch_snapshot", "pvepatch_rollback_on_failure", "pvepatch_snapshot_keep")


def snapshot_vars(f: Fields) -> SnapshotVars:
    """The host's snapshot settings; each one absent stays None (the command line decides)."""
    snap, rollback, keep = SNAPSHOT_FIELDS
    return SnapshotVars(
        snapshot=f.boolean(snap) if snap in f.vars else None,
        rollback_on_failure=f.boolean(rollback) if rollback in f.vars else None,
        keep=f.integer(keep, lo=1, hi=100) if keep in f.vars else None,
    )


def choice(f: Fields, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = f.text(name, default=default).lower()
    if value not in allowed:
        raise f.error(name, f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def vmid(f: Fields) -> int:
    if "vmid" not in f.vars:
        raise f.error("vmid", "is missing: every target VM must define vmid and proxmox_host")
    return f.integer("vmid", lo=VMID_MIN, hi=VMID_MAX)
