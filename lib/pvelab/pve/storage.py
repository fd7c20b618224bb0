"""The lab's `local` storage: volume ids to files and formats, and which can snapshot."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pvelab.paths import LabPaths
from pvelab.pve.vmconf import ConfError

# `local:vm-<vmid>-disk-<n>` is a qcow2 file, `local:vm-<vmid>-disk-<n>.raw` a raw one.
_VOLUME_RE = re.compile(r"[\w\-]+:(vm-(\d+)-disk-\d+)(\.raw)?")
# QS8 Drive.pm valid_drive_names: the order PVE's foreach_volume walks a config in.
_DRIVE_KEYS = (
    *(f"ide{n}" for n in range(4)),
    *(f"scsi{n}" for n in range(31)),
    *(f"virtio{n}" for n in range(16)),
    *(f"sata{n}" for n in range(6)),
    "efidisk0",
    "tpmstate0",
)


@dataclass(frozen=True)
class Volume:
    """One disk volume of a VM: its id as the config names it, its file, its format."""

    volid: str
    path: Path
    format: str  # qcow2 | raw


def volume(volid: str, vmid: int, paths: LabPaths) -> Volume:
    """Map `local:vm-<vmid>-disk-<n>[.raw]` to its file under `<lab>/disks/`."""
    match = _VOLUME_RE.fullmatch(volid)
    if not match or int(match.group(2)) != vmid:
        raise ConfError(f"unsupported volume '{volid}' (lab knows local:vm-{vmid}-disk-N[.raw])")
    if match.group(3):
        return Volume(volid, paths.disks_dir / f"{match.group(1)}.raw", "raw")
    return Volume(volid, paths.disks_dir / f"{match.group(1)}.qcow2", "qcow2")


def drive_is_cdrom(value: str) -> bool:
    """PVE's drive_is_cdrom: `media=cdrom` (the cloud-init drive included)."""
    return "media=cdrom" in value.split(",")[1:]


def drive_volid(value: str) -> str:
    """The volume id of a drive property string (`local:vm-1-disk-0,size=2G`)."""
    return value.split(",", 1)[0]


def drives(conf: dict[str, str]) -> Iterator[tuple[str, str]]:
    """(key, value) of every drive of a config section, in PVE's foreach_volume order."""
    for key in _DRIVE_KEYS:
        if key in conf:
            yield key, conf[key]


def disks(conf: dict[str, str]) -> Iterator[tuple[str, str]]:
    """The drives that are disks (not CD-ROMs): the ones a snapshot covers."""
    return ((k, v) for k, v in drives(conf) if not drive_is_cdrom(v))


def has_snapshot_feature(conf: dict[str, str], vmid: int, paths: LabPaths) -> bool:
    """has_feature('snapshot'): every disk must be qcow2 (PS8 Plugin.pm volume_has_feature)."""
    for _key, value in disks(conf):
        try:
            if volume(drive_volid(value), vmid, paths).format != "qcow2":
                return False
        except ConfError:
            return False
    return True
