"""The validated inventory: one record per target VM, bound to its VMID and Proxmox host."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_GROUP = "ubuntu_vms"
PIHOLE_GROUP = "pihole"
PROXMOX_GROUP = "proxmox"
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
    # the inventory variable that named known_hosts_files (for error messages)
    known_hosts_field: str = ""

    def __str__(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"


@dataclass(frozen=True)
class ProxmoxHost:
    """A Proxmox host of the inventory; `node` is its PVE node name (`pvepatch_pve_node`, by
    default the inventory name up to its first dot), the name the cluster knows it by."""

    name: str
    ssh: SSHSpec
    pve_node: str | None = None

    @property
    def node(self) -> str:
        return self.pve_node or self.name.split(".")[0]


@dataclass(frozen=True)
class PiholeSpec:
    """The DNS checks of a Pi-hole VM, run from the machine running pytest.

    `server` is an IP address (a host name in the inventory is resolved at load time and kept
    in `server_name`); `blocked_name` is None when the inventory sets no `pihole_blocked_name`:
    the block check is then skipped, with that reason.
    """

    server: str
    port: int = 53
    resolve_name: str = "pi.hole"
    blocked_name: str | None = None
    service: str = "pihole-FTL"
    protocol: str = "udp"
    server_name: str = ""


@dataclass(frozen=True)
class SnapshotVars:
    """`pvepatch_snapshot`, `pvepatch_rollback_on_failure`, `pvepatch_snapshot_keep` of one host
    (host variables over group variables); None where the inventory does not set them."""

    snapshot: bool | None = None
    rollback_on_failure: bool | None = None
    keep: int | None = None


@dataclass(frozen=True)
class Target:
    """One VM to patch or verify, explicitly bound to its VMID and Proxmox host."""

    name: str
    vmid: int
    proxmox: ProxmoxHost
    ssh: SSHSpec
    groups: frozenset[str] = frozenset()
    pihole: PiholeSpec | None = None
    # hosts sharing `pvepatch_redundancy_group` are never down together
    redundancy_group: str | None = None
    # per-VM snapshot settings from the inventory (None: the command line decides)
    snapshot: SnapshotVars = field(default_factory=lambda: SnapshotVars())

    def __str__(self) -> str:
        return f"{self.name} (VM {self.vmid} on {self.proxmox.name})"


@dataclass(frozen=True)
class Inventory:
    """The selected targets; `warnings` are to be shown before anything is done."""

    path: Path
    targets: tuple[Target, ...]
    proxmox_hosts: Mapping[str, ProxmoxHost] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # every host of the target group per redundancy group, selected by --limit or not
    redundancy: Mapping[str, tuple[Target, ...]] = field(default_factory=dict)

    def target(self, name: str) -> Target:
        return next(t for t in self.targets if t.name == name)

    def partners(self, target: Target) -> tuple[Target, ...]:
        """The other members of the target's redundancy group (never down with it)."""
        if target.redundancy_group is None:
            return ()
        members = self.redundancy.get(target.redundancy_group, ())
        return tuple(t for t in members if t.name != target.name)
