"""OpenSSH known_hosts files read as OpenSSH reads them, and the host-key policy of a run.

Pure: no paramiko here (ssh.py turns the entries into keys). Handled: comments, hashed names
(`|1|salt|hash`), patterns with `*`, `?` and `!negation`, `[host]:port`, and the markers
`@revoked` (that key is refused, for every host) and `@cert-authority` (host certificates are
not supported: such lines are skipped, and an unknown-key error says so).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pvepatch.errors import InventoryError, InventoryProblems
from pvepatch.inventory import Inventory, SSHSpec

MARKERS = {"@revoked": "revoked", "@cert-authority": "cert-authority"}
DEV_NULL = Path("/dev/null")


@dataclass(frozen=True)
class KnownHost:
    """One key line of a known_hosts file."""

    file: Path
    line: int
    marker: str  # "", "revoked" or "cert-authority"
    patterns: str
    key_type: str
    key: str  # base64, as written

    @property
    def where(self) -> str:
        return f"{self.file} line {self.line}"

    def matches(self, name: str) -> bool:
        """Does this line apply to `name` (`host` or `[host]:port`, as OpenSSH looks it up)?"""
        if self.patterns.startswith("|1|"):
            return _hashed_match(self.patterns, name)
        return match_patterns(self.patterns, name)


def lookup_name(address: str, port: int) -> str:
    """The name OpenSSH looks up in known_hosts: `host`, or `[host]:port` off port 22."""
    return address if port == 22 else f"[{address}]:{port}"


def match_patterns(patterns: str, name: str) -> bool:
    """OpenSSH's match_hostname: a negated pattern that matches wins; else any positive one."""
    found = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if _glob(pattern[1:] if negated else pattern).fullmatch(name.lower()):
            if negated:
                return False
            found = True
    return found


def _glob(pattern: str) -> re.Pattern[str]:
    # only * and ? are special in known_hosts ('[' is literal: '[host]:port')
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.compile("".join(parts))


def _hashed_match(entry: str, name: str) -> bool:
    try:
        _, _, salt, digest = entry.split("|", 3)
        mac = hmac.new(base64.b64decode(salt), name.lower().encode(), hashlib.sha1).digest()
        return hmac.compare_digest(mac, base64.b64decode(digest))
    except (ValueError, binascii.Error):
        return False


def parse_line(file: Path, number: int, text: str) -> KnownHost | None:
    """One line, or None for comments, blank and malformed lines (OpenSSH skips those too)."""
    fields = text.split()
    if not fields or fields[0].startswith("#"):
        return None
    marker = ""
    if fields[0].startswith("@"):
        if fields[0] not in MARKERS:
            return None
        marker, fields = MARKERS[fields[0]], fields[1:]
    if len(fields) < 3:
        return None
    return KnownHost(file, number, marker, fields[0], fields[1], fields[2])


def read(file: Path) -> list[KnownHost]:
    """Every key line of `file` (raises OSError when it cannot be read)."""
    text = file.read_text(encoding="utf-8", errors="replace")
    entries = (parse_line(file, n, line) for n, line in enumerate(text.splitlines(), 1))
    return [e for e in entries if e is not None]


@dataclass(frozen=True)
class HostKeys:
    """What the known_hosts files say about one host."""

    name: str
    known: tuple[KnownHost, ...]  # plain keys for this host, revoked ones left out
    revoked: tuple[KnownHost, ...]  # every @revoked line (a revoked key is refused everywhere)
    cert_authorities: tuple[KnownHost, ...]  # @cert-authority lines for this host (unsupported)

    def revocation(self, key_type: str, key: str) -> KnownHost | None:
        return next((r for r in self.revoked if (r.key_type, r.key) == (key_type, key)), None)

    def cert_note(self) -> str:
        if not self.cert_authorities:
            return ""
        where = ", ".join(c.where for c in self.cert_authorities[:3])
        return (
            f"; {where} trusts a @cert-authority for this host, but host certificates are not "
            "supported: add the host's own key"
        )


def host_keys(entries: Iterable[KnownHost], name: str) -> HostKeys:
    entries = list(entries)
    revoked = tuple(e for e in entries if e.marker == "revoked")
    bad = {(r.key_type, r.key) for r in revoked}
    known = tuple(
        e for e in entries if not e.marker and (e.key_type, e.key) not in bad and e.matches(name)
    )
    cas = tuple(e for e in entries if e.marker == "cert-authority" and e.matches(name))
    return HostKeys(name, known, revoked, cas)


def accept_new_file(default: Path, files: Sequence[Path]) -> Path:
    """Where --accept-new-host-keys records a key: the last file named, else `default`."""
    return files[-1] if files else default


def _forgets(path: Path) -> bool:
    """A known_hosts 'file' that keeps nothing (/dev/null, any device, a directory)."""
    if path == DEV_NULL:
        return True
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode)


def check_host_key_policy(
    inventory: Inventory, accept_new: bool, extra_known_hosts: Sequence[Path] = ()
) -> None:
    """Refuse --accept-new-host-keys where known_hosts keeps nothing (every key 'new' forever).

    Raises one InventoryError naming the file, each host and the field that set
    UserKnownHostsFile. Call it once, before any connection.
    """
    if not accept_new:
        return
    label = str(inventory.path)
    problems: list[InventoryError] = []
    for extra in extra_known_hosts:
        if _forgets(extra):
            problems.append(
                InventoryError(
                    label,
                    f"--known-hosts {extra} keeps no keys: with --accept-new-host-keys every host "
                    "key would be accepted as new, on every run; name a real file",
                )
            )
    for name, spec in _hosts(inventory):
        forgetful = [f for f in spec.known_hosts_files if _forgets(f)]
        if forgetful:
            problems.append(
                InventoryError(
                    label,
                    f"sets UserKnownHostsFile={forgetful[0]}: with --accept-new-host-keys every "
                    "host key would be accepted as new, on every run (never verified); drop "
                    "--accept-new-host-keys or name a real known_hosts file",
                    host=name,
                    field=spec.known_hosts_field or "ansible_ssh_common_args",
                )
            )
    if problems:
        raise InventoryProblems(label, problems)


def _hosts(inventory: Inventory) -> list[tuple[str, SSHSpec]]:
    hosts = [(t.name, t.ssh) for t in inventory.targets]
    return hosts + [(p.name, p.ssh) for p in inventory.proxmox_hosts.values()]
