"""Read an Ansible YAML inventory and bind each target VM to its Proxmox host."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pvepatch.errors import InventoryError

DEFAULT_GROUP = "ubuntu_vms"
PIHOLE_GROUP = "pihole"
VMID_MIN, VMID_MAX = 100, 999_999_999


@dataclass(frozen=True)
class SSHSpec:
    """How to reach one host over SSH."""

    address: str
    port: int = 22
    user: str = "root"
    key_file: Path | None = None
    become: bool = False
    known_hosts_files: tuple[Path, ...] = ()

    def __str__(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"


@dataclass(frozen=True)
class ProxmoxHost:
    name: str
    ssh: SSHSpec


@dataclass(frozen=True)
class PiholeSpec:
    """The DNS checks of a Pi-hole VM, run from the machine running pytest."""

    server: str
    port: int
    resolve_name: str
    blocked_name: str
    service: str
    protocol: str = "udp"


@dataclass(frozen=True)
class Target:
    """One VM to patch or verify, explicitly bound to its VMID and Proxmox host."""

    name: str
    vmid: int
    proxmox: ProxmoxHost
    ssh: SSHSpec
    groups: frozenset[str] = frozenset()
    pihole: PiholeSpec | None = None

    def __str__(self) -> str:
        return f"{self.name} (VM {self.vmid} on {self.proxmox.name})"


@dataclass(frozen=True)
class Inventory:
    path: Path
    targets: tuple[Target, ...]
    proxmox_hosts: Mapping[str, ProxmoxHost] = field(default_factory=dict)

    def target(self, name: str) -> Target:
        return next(t for t in self.targets if t.name == name)


# --- the Ansible YAML structure -----------------------------------------------------------


@dataclass
class _Group:
    name: str
    vars: dict[str, Any] = field(default_factory=dict)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)


class _Tree:
    """Groups, hosts and variables as Ansible's YAML inventory plugin reads them."""

    def __init__(self, path: str, data: Any):
        self.path = path
        self.groups: dict[str, _Group] = {}
        if data is None:
            raise InventoryError(path, "the inventory is empty")
        if not isinstance(data, dict):
            raise InventoryError(path, "the top level must be a mapping of groups (e.g. 'all:')")
        all_group = self._group("all")
        for name, body in data.items():
            self._parse_group(str(name), body)
            if name != "all" and str(name) not in all_group.children:
                all_group.children.append(str(name))

    def _group(self, name: str) -> _Group:
        return self.groups.setdefault(name, _Group(name))

    def _parse_group(self, name: str, body: Any) -> None:
        group = self._group(name)
        if body is None:
            return
        if not isinstance(body, dict):
            raise InventoryError(self.path, f"group '{name}' must be a mapping")
        unknown = set(body) - {"hosts", "vars", "children"}
        if unknown:
            raise InventoryError(
                self.path,
                f"group '{name}': unknown key(s) {sorted(unknown)} "
                "(expected hosts, vars, children)",
            )
        for host, hvars in (body.get("hosts") or {}).items():
            if hvars is not None and not isinstance(hvars, dict):
                raise InventoryError(self.path, "host variables must be a mapping", host=str(host))
            group.hosts.setdefault(str(host), {}).update(hvars or {})
        gvars = body.get("vars") or {}
        if not isinstance(gvars, dict):
            raise InventoryError(self.path, f"group '{name}': 'vars' must be a mapping")
        group.vars.update(gvars)
        children = body.get("children") or {}
        if not isinstance(children, dict):
            raise InventoryError(self.path, f"group '{name}': 'children' must be a mapping")
        for child, child_body in children.items():
            if str(child) not in group.children:
                group.children.append(str(child))
            self._parse_group(str(child), child_body)

    def depth(self) -> dict[str, int]:
        """Each group's distance from 'all' (the longest path, as Ansible orders vars)."""
        depth = {"all": 0}
        frontier = ["all"]
        for _ in range(len(self.groups) + 1):
            nxt = []
            for name in frontier:
                for child in self.groups[name].children:
                    if depth.get(child, -1) < depth[name] + 1:
                        depth[child] = depth[name] + 1
                        nxt.append(child)
            if not nxt:
                return depth
            frontier = nxt
        raise InventoryError(self.path, "group 'children' form a cycle")

    def hosts(self) -> list[str]:
        seen: dict[str, None] = {}
        for group in self.groups.values():
            for host in group.hosts:
                seen.setdefault(host, None)
        return list(seen)

    def groups_of(self, host: str) -> set[str]:
        """Every group `host` belongs to, directly or through children."""
        direct = {g.name for g in self.groups.values() if host in g.hosts}
        result = set(direct) | {"all"}
        changed = True
        while changed:
            changed = False
            for g in self.groups.values():
                if g.name not in result and any(c in result for c in g.children):
                    result.add(g.name)
                    changed = True
        return result

    def members(self, group: str) -> list[str]:
        """Hosts of `group` and of its children, in inventory order."""
        return [h for h in self.hosts() if group in self.groups_of(h)]

    def host_vars(self, host: str, depth: dict[str, int]) -> dict[str, Any]:
        """Group vars from 'all' down to the deepest group, then host vars (Ansible precedence)."""
        merged: dict[str, Any] = {}
        for name in sorted(self.groups_of(host), key=lambda g: (depth.get(g, 0), g)):
            merged.update(self.groups[name].vars)
        for group in self.groups.values():
            merged.update(group.hosts.get(host, {}))
        return merged


# --- from variables to validated records --------------------------------------------------


class _Fields:
    """Typed access to one host's variables, with errors that name file, host and field."""

    def __init__(self, path: str, host: str, hvars: Mapping[str, Any]):
        self.path, self.host, self.vars = path, host, hvars

    def error(self, field_name: str, message: str) -> InventoryError:
        return InventoryError(self.path, message, host=self.host, field=field_name)

    def text(self, name: str, default: str | None = None) -> str:
        value = self.vars.get(name, default)
        if value is None:
            raise self.error(name, "is missing")
        if not isinstance(value, str | int) or isinstance(value, bool) or str(value).strip() == "":
            raise self.error(name, f"must be a non-empty string, got {value!r}")
        return str(value)

    def integer(self, name: str, default: int | None = None, lo: int = 1, hi: int = 65535) -> int:
        value = self.vars.get(name, default)
        if value is None:
            raise self.error(name, "is missing")
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())
        ):
            raise self.error(name, f"must be an integer, got {value!r}")
        number = int(value)
        if not lo <= number <= hi:
            raise self.error(name, f"must be between {lo} and {hi}, got {number}")
        return number

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.vars.get(name, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"yes", "true", "1", "no", "false", "0"}:
            return value.lower() in {"yes", "true", "1"}
        raise self.error(name, f"must be a boolean, got {value!r}")


def _known_hosts_from_args(f: _Fields) -> tuple[Path, ...]:
    """UserKnownHostsFile given in ansible_ssh_common_args / ansible_ssh_extra_args."""
    files: list[Path] = []
    for name in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
        raw = f.vars.get(name)
        if not raw:
            continue
        try:
            words = shlex.split(str(raw))
        except ValueError as exc:
            raise f.error(name, f"cannot be parsed: {exc}") from exc
        options = [w[2:] if w.startswith("-o") and len(w) > 2 else w for w in words]
        for option in options:
            key, _, value = option.partition("=")
            if key.strip().lower() == "userknownhostsfile" and value:
                files += [Path(p).expanduser() for p in value.split()]
    return tuple(files)


def _ssh_spec(f: _Fields, base_dir: Path) -> SSHSpec:
    key = f.vars.get("ansible_ssh_private_key_file")
    key_path = None
    if key is not None:
        key_path = Path(f.text("ansible_ssh_private_key_file")).expanduser()
        if not key_path.is_absolute():
            key_path = base_dir / key_path
        if not key_path.is_file():
            raise f.error("ansible_ssh_private_key_file", f"file not found: {key_path}")
    return SSHSpec(
        address=f.text("ansible_host", default=f.host),
        port=f.integer("ansible_port", default=22),
        user=f.text("ansible_user", default="root"),
        key_file=key_path,
        become=f.boolean("ansible_become", default=False),
        known_hosts_files=_known_hosts_from_args(f),
    )


def _pihole_spec(f: _Fields, ssh: SSHSpec, groups: set[str]) -> PiholeSpec | None:
    if PIHOLE_GROUP not in groups and not f.boolean("pihole", default=False):
        return None
    return PiholeSpec(
        server=f.text("pihole_dns_server", default=ssh.address),
        port=f.integer("pihole_dns_port", default=53),
        resolve_name=f.text("pihole_resolve_name"),
        blocked_name=f.text("pihole_blocked_name"),
        service=f.text("pihole_service", default="pihole-FTL"),
        protocol=_choice(f, "pihole_dns_protocol", ("udp", "tcp"), "udp"),
    )


def _choice(f: _Fields, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = f.text(name, default=default).lower()
    if value not in allowed:
        raise f.error(name, f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _select(tree: _Tree, path: str, group: str, limit: str | None) -> list[str]:
    if group not in tree.groups:
        raise InventoryError(path, f"target group '{group}' not found (see --group)")
    targets = tree.members(group)
    if not targets:
        raise InventoryError(path, f"target group '{group}' has no hosts")
    if not limit:
        return targets
    wanted: set[str] = set()
    excluded: set[str] = set()
    for word in limit.replace(":", ",").split(","):
        word = word.strip()
        if not word:
            continue
        negate = word.startswith("!")
        name = word.lstrip("!")
        if name in tree.groups:
            names = set(tree.members(name))
        elif name in tree.hosts():
            names = {name}
        else:
            raise InventoryError(path, f"--limit: '{name}' is neither a host nor a group")
        (excluded if negate else wanted).update(names)
    chosen = [t for t in targets if (not wanted or t in wanted) and t not in excluded]
    if not chosen:
        raise InventoryError(path, f"--limit '{limit}' selects no host of group '{group}'")
    return chosen


def load_inventory(
    path: str | Path, group: str = DEFAULT_GROUP, limit: str | None = None
) -> Inventory:
    """Parse and validate the inventory; raise InventoryError naming file, host and field."""
    path = Path(path)
    label = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InventoryError(label, f"cannot read inventory: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InventoryError(label, f"YAML syntax error{where}: {problem}") from exc
    tree = _Tree(label, data)
    depth = tree.depth()
    names = _select(tree, label, group, limit)
    base_dir = path.parent
    all_targets = tree.members(group)

    proxmox: dict[str, ProxmoxHost] = {}
    targets: list[Target] = []
    bound: dict[tuple[str, int], str] = {}
    for name in all_targets:
        f = _Fields(label, name, tree.host_vars(name, depth))
        if "vmid" not in f.vars:
            raise f.error("vmid", "is missing: every target VM must define vmid and proxmox_host")
        vmid = f.integer("vmid", lo=VMID_MIN, hi=VMID_MAX)
        pve_name = f.text("proxmox_host")
        if pve_name not in tree.hosts():
            raise f.error(
                "proxmox_host", f"names '{pve_name}', which is not a host of the inventory"
            )
        if pve_name in all_targets:
            raise f.error("proxmox_host", f"names '{pve_name}', which is itself a target VM")
        key = (pve_name, vmid)
        if key in bound:
            raise f.error(
                "vmid", f"{vmid} on Proxmox host '{pve_name}' is also the vmid of '{bound[key]}'"
            )
        bound[key] = name
        if name not in names:
            continue
        if pve_name not in proxmox:
            pf = _Fields(label, pve_name, tree.host_vars(pve_name, depth))
            proxmox[pve_name] = ProxmoxHost(pve_name, _ssh_spec(pf, base_dir))
        groups = tree.groups_of(name)
        ssh = _ssh_spec(f, base_dir)
        targets.append(
            Target(
                name, vmid, proxmox[pve_name], ssh, frozenset(groups), _pihole_spec(f, ssh, groups)
            )
        )
    return Inventory(path, tuple(targets), proxmox)


def names(targets: Iterable[Target]) -> list[str]:
    return [t.name for t in targets]
