"""Storage `local` and its vzdump archives, as PVE 8's storage layer lists them.

The lab's only storage is `local`, a `dir` storage rooted at the lab directory: backups are
`<lab>/dump/vzdump-qemu-<vmid>-YYYY_MM_DD-HH_MM_SS.vma.zst`. The lab writes small placeholder
files there (`python -m pvelab backup`), not real dumps: every listing field PVE derives from
the file name or the file itself is real. Sources: PS8 `src/PVE/Storage.pm` (`archive_info`,
`volume_list`, `storage_info`) and `src/PVE/Storage/Plugin.pm` (`get_subdir_files`).
"""

from __future__ import annotations

import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pvelab.paths import LabPaths

STORAGE = "local"
STORAGE_TYPE = "dir"
# content_hash_to_string: sorted. `images` because the lab's disks are `local:` volumes.
CONTENT = ("backup", "images", "iso", "vztmpl")
# The lab's disks and dumps are files every node reaches: `shared 1` (a dir storage may be
# marked shared when it is on a file system mounted on all nodes), so migration copies nothing.
SHARED = 1
# PS8 Storage.pm: $BACKUP_EXT_RE_2 with Plugin.pm's KNOWN_COMPRESSION_FORMATS.
BACKUP_EXT_RE_2 = r"\.(tgz|(?:tar|vma)(?:\.(gz|lzo|zst|bz2))?)"
STD_NAME = re.compile(
    r"vzdump-(qemu|lxc|openvz)-([1-9][0-9]{2,8})-(\d{4})_(\d{2})_(\d{2})-(\d{2})_(\d{2})_(\d{2})"
)
PLACEHOLDER = "pvelab placeholder for a vzdump archive of VM {vmid}: not a real dump\n"


def archive_name(vmid: int, when: datetime) -> str:
    """vzdump's file name: the start time in the node's local time."""
    local = when.astimezone() if when.tzinfo else when
    return f"vzdump-qemu-{vmid}-{local:%Y_%m_%d-%H_%M_%S}.vma.zst"


def create(paths: LabPaths, vmid: int, when: datetime, notes: str | None = None) -> Path:
    """A placeholder archive (and `.notes`) in storage `local`; returns its path."""
    paths.dump_dir.mkdir(parents=True, exist_ok=True)
    archive = paths.dump_dir / archive_name(vmid, when)
    archive.write_text(PLACEHOLDER.format(vmid=vmid))
    if notes:
        archive.with_name(archive.name + ".notes").write_text(notes + "\n")
    return archive


def archive_info(name: str) -> dict[str, Any]:
    """PVE::Storage::archive_info: type, and vmid/ctime (timelocal) of a standard name."""
    match = re.fullmatch(rf"(vzdump-(lxc|openvz|qemu)-.+){BACKUP_EXT_RE_2}", name)
    if match is None:
        raise ValueError(f"ERROR: couldn't determine archive info from '{name}'")
    info: dict[str, Any] = {"type": match.group(2)}
    std = re.fullmatch(STD_NAME.pattern + r"\." + re.escape(match.group(3)), name)
    if std is not None:
        year, month, day, hour, minute, second = (int(g) for g in std.groups()[2:8])
        info["vmid"] = int(std.group(2))
        local = (year, month, day, hour, minute, second, 0, 0, -1)
        info["ctime"] = int(time.mktime(local))  # timelocal
    return info


def _first_line(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").split("\n", 1)[0]
    except OSError:
        return None


def backup_files(paths: LabPaths, vmid: int | None = None) -> list[dict[str, Any]]:
    """get_subdir_files($sid, $path, 'backup', $vmid) on storage `local`."""
    result = []
    files = sorted(paths.dump_dir.iterdir()) if paths.dump_dir.is_dir() else []
    for path in files:
        match = re.fullmatch(rf"([^/]+{BACKUP_EXT_RE_2})", path.name)
        if match is None or not path.is_file():
            continue
        name, fmt = match.group(1), match.group(2)
        if vmid is not None and not re.search(rf"\S+-{vmid}-\S+", name):
            continue
        info: dict[str, Any] = {"volid": f"{STORAGE}:backup/{name}", "format": fmt}
        try:
            archive = archive_info(name)
        except ValueError:
            archive = {}
        if "ctime" in archive:
            info["ctime"] = archive["ctime"]
        info["subtype"] = archive.get("type", "unknown")
        owner = re.search(rf"-([1-9][0-9]{{2,8}})-[^/]+\.{re.escape(fmt)}$", name)
        if vmid is not None or owner is not None:
            info["vmid"] = vmid if vmid is not None else int(owner.group(1))  # type: ignore[union-attr]
        notes = _first_line(path.with_name(path.name + ".notes"))
        if notes is not None:
            info["notes"] = notes
        if path.with_name(path.name + ".protected").exists():
            info["protected"] = 1
        stat = path.stat()
        info["size"] = stat.st_size
        info.setdefault("ctime", int(stat.st_ctime))
        info["content"] = "backup"
        result.append(info)
    return sorted(result, key=lambda item: str(item["volid"]).lower())


def content(paths: LabPaths, content_type: str | None, vmid: int | None) -> list[dict[str, Any]]:
    """volume_list on `local`: only backups exist in the lab (images are not listed)."""
    if content_type is not None and content_type != "backup":
        return []
    return backup_files(paths, vmid)


def status(paths: LabPaths) -> dict[str, Any]:
    """storage_info's entry for `local` (dir plugin status: df of its path)."""
    st = os.statvfs(paths.root if paths.root.exists() else "/")
    total = st.f_blocks * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    used = total - st.f_bfree * st.f_frsize
    entry: dict[str, Any] = {
        "storage": STORAGE,
        "type": STORAGE_TYPE,
        "content": ",".join(CONTENT),
        "active": 1,
        "enabled": 1,
        "shared": SHARED,
        "total": total,
        "used": used,
        "avail": avail,
    }
    if total:
        entry["used_fraction"] = used / total
    return entry
