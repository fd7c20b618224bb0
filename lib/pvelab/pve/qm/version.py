"""Which Proxmox VE the stand-in `qm` plays: 8.4 (qemu-server 8.4) unless PVELAB_PVE_VERSION=9.

Every difference between the two lives in `Flavour`, so the commands ask one question
(`flavour().<difference>`) instead of comparing version numbers themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENV_VERSION = "PVELAB_PVE_VERSION"
DEFAULT_MAJOR = 8


def pve_major() -> int:
    """The PVE major version from $PVELAB_PVE_VERSION (`9`, `9.1`, ...); 8 when unset or odd."""
    text = os.environ.get(ENV_VERSION, "").strip()
    head = text.split(".", 1)[0]
    return int(head) if head.isdigit() and int(head) >= 9 else DEFAULT_MAJOR


@dataclass(frozen=True)
class Flavour:
    """What differs between qemu-server 8.4 (stable-bookworm) and 9.x (master)."""

    major: int
    # QMPClient.pm: QS8 dies "VM <id> qmp command ..." for every peer, QS9 names the peer type
    # ("$peer->{name} $peer->{type} command ..."), so agent errors read "qga command" in 9 only.
    qga_error_kind: str
    # QS9 Agent.pm $agent_fmt adds `freeze-fs` (aliases `freeze-fs-on-backup`, `guest-fsfreeze`);
    # QS8 QemuServer.pm $agent_fmt only knows `freeze-fs-on-backup`.
    agent_keys: tuple[str, ...]
    agent_aliases: tuple[tuple[str, str], ...]
    # QS9 QemuConfig __snapshot_check_freeze_needed -> guest_fs_freeze_applicable (honours
    # freeze-fs, prints why it skips); QS8 freezes whenever the agent is enabled and answers.
    snapshot_freeze_applicable: bool
    # QS9 qemu_volume_snapshot prints "internal qemu snapshot" for a running qcow2.
    internal_snapshot_notice: bool


PVE8 = Flavour(
    major=8,
    qga_error_kind="qmp",
    agent_keys=("enabled", "fstrim_cloned_disks", "freeze-fs-on-backup", "type"),
    agent_aliases=(),
    snapshot_freeze_applicable=False,
    internal_snapshot_notice=False,
)
PVE9 = Flavour(
    major=9,
    qga_error_kind="qga",
    agent_keys=("enabled", "fstrim_cloned_disks", "freeze-fs", "type"),
    agent_aliases=(("freeze-fs-on-backup", "freeze-fs"), ("guest-fsfreeze", "freeze-fs")),
    snapshot_freeze_applicable=True,
    internal_snapshot_notice=True,
)


def flavour() -> Flavour:
    """The differences of the PVE version in effect (read from the environment each call)."""
    return PVE9 if pve_major() >= 9 else PVE8
