"""Snapshot sections of a VM config: PVE's rules for names, copies, parents and unused disks."""

from __future__ import annotations

import re
import uuid

from pvelab.pve import storage

SNAPNAME_MAX = 40
_CONFIGID_RE = re.compile(r"[a-z][a-z0-9_-]+", re.IGNORECASE | re.ASCII)
_UNUSED_RE = re.compile(r"unused\d+")
MAX_UNUSED_DISKS = 256
# AbstractConfig __snapshot_copy_config: what a snapshot does not take from the config.
_NOT_COPIED = ("snapstate", "snaptime", "vmstate", "lock", "digest", "description")


class TooManyUnused(ValueError):
    """add_unused_volume found no free `unusedN` key."""


def snapname_error(value: str) -> str | None:
    """`pve-snapshot-name`: format pve-configid, then maxLength 40 (JSONSchema check_prop order).

    The format error keeps the validator's newline, as PVE prints it (a blank line follows)."""
    if not _CONFIGID_RE.fullmatch(value):
        return f"invalid format - invalid configuration ID '{value}'\n"
    if len(value) > SNAPNAME_MAX:
        return f"value may only be {SNAPNAME_MAX} characters long"
    return None


def perl_true(value: str | None) -> bool:
    """Perl truth of a config value: not undef, not empty, not "0"."""
    return bool(value) and value != "0"


def copy_config(source: dict[str, str]) -> dict[str, str]:
    """__snapshot_copy_config: everything but the snapshot bookkeeping and unused disks
    (`parent` is copied: a new snapshot's parent is the config's latest snapshot)."""
    return {k: v for k, v in source.items() if k not in _NOT_COPIED and not _UNUSED_RE.fullmatch(k)}


def add_unused(section: dict[str, str], volid: str) -> None:
    """add_unused_volume: the lowest free `unusedN`, no duplicates."""
    if any(v == volid for k, v in section.items() if _UNUSED_RE.fullmatch(k)):
        return
    free = next((n for n in range(MAX_UNUSED_DISKS) if f"unused{n}" not in section), None)
    if free is None:
        raise TooManyUnused("Too many unused volumes - please delete them first.")
    section[f"unused{free}"] = volid


def drop_used_unused(main: dict[str, str]) -> None:
    """write_vm_config: `unusedN` entries of volumes the config uses again are removed."""
    used = {storage.drive_volid(v) for _k, v in storage.drives(main)}
    for key in [k for k in main if _UNUSED_RE.fullmatch(k) and main[k] in used]:
        del main[key]


def reparent(sections: list[dict[str, str]], name: str, new_parent: str | None) -> None:
    """snapshot_delete's unlink_parent: who had `name` as parent gets its parent (or none)."""
    for section in sections:
        if section.get("parent") == name:
            if new_parent:
                section["parent"] = new_parent
            else:
                del section["parent"]


def rolled_back(
    main: dict[str, str], snap: dict[str, str], name: str, oldmachine: str | None
) -> dict[str, str]:
    """The main section after a rollback to `name`: __snapshot_apply_config (description and
    unused disks kept, disks the snapshot lacks become unused), `parent`, the rollback hook."""
    old = {k: v for k, v in main.items() if k != "lock"}
    snap_volids = {storage.drive_volid(v) for _k, v in storage.disks(snap)}
    for _key, value in storage.disks(old):
        if storage.drive_volid(value) not in snap_volids:
            add_unused(old, storage.drive_volid(value))
    new = {k: v for k, v in old.items() if k == "description" or _UNUSED_RE.fullmatch(k)}
    new.update(copy_config(snap))
    new["parent"] = name
    if "runningmachine" in new:
        del new["runningmachine"]
        new.pop("runningcpu", None)
    elif snap.get("vmstate") and oldmachine is None:
        new.pop("machine", None)
    if perl_true(new.get("vmgenid")):  # a new generation: the guest may react to being rolled back
        new["vmgenid"] = str(uuid.uuid4())
    drop_used_unused(new)
    return new
