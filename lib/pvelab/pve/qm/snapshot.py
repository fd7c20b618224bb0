"""`qm snapshot|listsnapshot|rollback|delsnapshot`: AbstractConfig's snapshot code on qcow2."""

from __future__ import annotations

import time
from typing import Any

from pvelab.pve import storage, vmconf, vmstate
from pvelab.pve.qm import formats, power, quorum, snapvol
from pvelab.pve.qm.context import Context, QmError, check_lock
from pvelab.pve.qm.options import ParamErrors
from pvelab.pve.qm.snapconf import (
    TooManyUnused,
    add_unused,
    copy_config,
    drop_used_unused,
    perl_true,
    reparent,
    rolled_back,
)
from pvelab.pve.vmconf import VMConf


def _add_unused(section: dict[str, str], volid: str) -> None:
    try:
        add_unused(section, volid)
    except TooManyUnused as exc:
        raise QmError(str(exc)) from exc


def _write(ctx: Context, vmid: int, conf: VMConf) -> None:
    vmconf.write_conf(ctx.paths.conf(vmid), conf)


def _snap(conf: VMConf, name: str) -> dict[str, str]:
    if name not in conf.snapshots:
        raise QmError(f"snapshot '{name}' does not exist")
    return conf.sections[name]


def _set_lock(ctx: Context, vmid: int, lock: str) -> None:
    with ctx.lock_config(vmid):
        conf = ctx.load(vmid)
        check_lock(conf)
        conf.main["lock"] = lock
        _write(ctx, vmid, conf)


# --- qm snapshot ----------------------------------------------------------------------------


def snapshot(ctx: Context, p: dict[str, Any]) -> None:
    """`qm snapshot <vmid> <snapname> [--description] [--vmstate]` (API `snapshot`)."""
    vmid, name = p["vmid"], p["snapname"]
    ctx.task = False  # the API code before fork_worker: plain dies
    if name == "current":
        raise QmError("unable to use snapshot name 'current' (reserved name)")
    if name.lower() == "pending":
        raise QmError("unable to use snapshot name 'pending' (reserved name)")
    ctx.load(vmid)
    ctx.task = True
    if p.get("vmstate") and vmstate.running_pid(ctx.paths, vmid):
        raise QmError("snapshot with vmstate (RAM) is not supported by the lab's qm")
    create(ctx, vmid, name, p.get("description"))


def _prepare(ctx: Context, vmid: int, name: str, description: str | None) -> dict[str, str]:
    with ctx.lock_config(vmid):
        conf = ctx.load(vmid)
        if perl_true(conf.main.get("template")):
            raise QmError("you can't take a snapshot if it's a template")
        check_lock(conf)
        if name in conf.snapshots:
            raise QmError(f"snapshot name '{name}' already used")
        if not storage.has_snapshot_feature(conf.main, vmid, ctx.paths):
            raise QmError("snapshot feature is not available")
        for other, section in sorted(conf.snapshots.items()):
            if section.get("parent") == name:
                ctx.warn(
                    f"deleting parent '{name}' reference from '{other}' to avoid bogus "
                    "snapshot cycle."
                )
                del section["parent"]
        snap = copy_config(conf.main)
        snap["snapstate"] = "prepare"
        snap["snaptime"] = str(int(time.time()))
        if description is not None and perl_true(description):
            snap["description"] = description
        conf.sections[name] = snap
        conf.main["lock"] = "snapshot"
        quorum.check_config_writable(ctx, vmid)
        _write(ctx, vmid, conf)
    return snap


def _commit(ctx: Context, vmid: int, name: str) -> None:
    with ctx.lock_config(vmid):
        conf = ctx.load(vmid)
        if conf.lock != "snapshot":
            raise QmError("missing snapshot lock")
        snap = _snap(conf, name)
        if snap.get("snapstate") != "prepare":
            raise QmError("wrong snapshot state")
        del snap["snapstate"]
        del conf.main["lock"]
        conf.main["parent"] = name
        _write(ctx, vmid, conf)


def create(ctx: Context, vmid: int, name: str, description: str | None) -> None:
    """snapshot_create: prepare, freeze + pause a running VM, snapshot each disk, commit."""
    snap = _prepare(ctx, vmid, name, description)
    main = ctx.load(vmid).main
    running = vmstate.running_pid(ctx.paths, vmid) is not None
    freezefs = running and snapvol.freeze_needed(ctx, vmid, main)
    done: list[str] = []
    was_running = False
    err = None
    try:
        if freezefs:
            snapvol.freeze(ctx, vmid, thaw=False)
        if running:
            was_running = snapvol.pause(ctx, vmid)
        for key, value in storage.disks(snap):
            volid = storage.drive_volid(value)
            ctx.out(f"snapshotting 'drive-{key}' ({volid})\n")
            snapvol.create(ctx, vmid, key, volid, name)
            done.append(key)
    except QmError as exc:
        err = exc
    if running:
        snapvol.resume(ctx, vmid, was_running)
        if freezefs:
            snapvol.freeze(ctx, vmid, thaw=True)
    if err is not None:
        ctx.warn("snapshot create failed: starting cleanup")
        try:
            delete(ctx, vmid, name, force=True, drivehash=done)
        except QmError as exc:
            ctx.warn(str(exc))
        raise err
    _commit(ctx, vmid, name)


# --- qm delsnapshot -------------------------------------------------------------------------


def delsnapshot(ctx: Context, p: dict[str, Any]) -> None:
    """`qm delsnapshot <vmid> <snapname> [--force]` (API `delsnapshot`)."""
    delete(ctx, p["vmid"], p["snapname"], force=bool(p.get("force")))


def _locked(ctx: Context, vmid: int, expected: str) -> VMConf:
    conf = ctx.load(vmid)
    if conf.lock != expected:
        raise QmError(f"encountered invalid lock, expected '{expected}'")
    return conf


def delete(
    ctx: Context, vmid: int, name: str, *, force: bool, drivehash: list[str] | None = None
) -> None:
    """snapshot_delete; `drivehash` (the disks done) only when cleaning up a failed create."""
    _snap(ctx.load(vmid), name)
    expected = "snapshot" if drivehash is not None else "snapshot-delete"
    if drivehash is None:
        _set_lock(ctx, vmid, expected)
    with ctx.lock_config(vmid):
        conf = _locked(ctx, vmid, expected)
        if perl_true(conf.main.get("template")):
            raise QmError("you can't delete a snapshot if vm is a template")
        snap = _snap(conf, name)
        snap["snapstate"] = "delete"
        _write(ctx, vmid, conf)
    unused = []
    for key, value in storage.disks(snap):
        volid = storage.drive_volid(value)
        if drivehash is None or key in drivehash:
            try:
                snapvol.delete(ctx, vmid, volid, name)
                unused.append(volid)
            except QmError as exc:
                if not force:
                    raise
                ctx.warn(str(exc))
        if not force:  # the drive leaves the snapshot's section once its snapshot is gone
            with ctx.lock_config(vmid):
                conf = _locked(ctx, vmid, expected)
                section = _snap(conf, name)
                section.pop(key, None)
                _add_unused(section, volid)
                _write(ctx, vmid, conf)
    with ctx.lock_config(vmid):
        conf = _locked(ctx, vmid, expected)
        new_parent = _snap(conf, name).get("parent")
        reparent([conf.main, *conf.snapshots.values()], name, new_parent)
        del conf.sections[name]
        del conf.main["lock"]
        for volid in unused:
            _add_unused(conf.main, volid)
        drop_used_unused(conf.main)
        _write(ctx, vmid, conf)


# --- qm rollback ----------------------------------------------------------------------------


def _rollback_snap(conf: VMConf, name: str) -> dict[str, str]:
    if perl_true(conf.main.get("template")):
        raise QmError("you can't rollback if vm is a template")
    snap = _snap(conf, name)
    if snap.get("snapstate"):
        raise QmError(
            f"unable to rollback to incomplete snapshot (snapstate = {snap['snapstate']})"
        )
    return snap


def rollback(ctx: Context, p: dict[str, Any]) -> None:
    """`qm rollback <vmid> <snapname> [--start]`: hard stop, disks back, snapshot's config."""
    vmid, name = p["vmid"], p["snapname"]
    with ctx.lock_config(vmid):
        conf = ctx.load(vmid)
        snap = _rollback_snap(conf, name)
        check_lock(conf)
        # __snapshot_rollback_vm_stop: vm_stop with a 5 s timeout (QMP quit, then SIGTERM)
        power.do_vm_stop(ctx, vmid, skiplock=False, timeout=5, shutdown=False, force=True)
        if vmstate.running_pid(ctx.paths, vmid):
            raise QmError(f"unable to rollback vm {vmid}: vm is running")
        oldmachine = conf.main.get("machine")
        conf.main["lock"] = "rollback"
        _write(ctx, vmid, conf)
    for _key, value in storage.disks(snap):
        snapvol.rollback(ctx, vmid, storage.drive_volid(value), name)
    with ctx.lock_config(vmid):
        conf = ctx.load(vmid)
        snap = _rollback_snap(conf, name)
        if conf.lock != "rollback":
            raise QmError("got wrong lock")
        conf.main = rolled_back(conf.main, snap, name, oldmachine)
        conf.pending = {}  # neither [PENDING] nor special sections survive __snapshot_apply_config
        conf.sections = dict(conf.snapshots)
        _write(ctx, vmid, conf)
    if p.get("start") and not vmstate.running_pid(ctx.paths, vmid):
        power.start(ctx, {"vmid": vmid})


# --- qm listsnapshot, qm config --snapshot ------------------------------------------------


def _snaptime(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0


def listsnapshot(ctx: Context, p: dict[str, Any]) -> None:
    """`qm listsnapshot <vmid>`: API snapshot_list printed by print_snapshot_tree."""
    conf = ctx.load(p["vmid"])
    items = [
        formats.SnapshotItem(
            name, _snaptime(s.get("snaptime")), s.get("description", ""), s.get("parent") or None
        )
        for name, s in sorted(conf.snapshots.items())
    ]
    items.append(formats.SnapshotItem("current", None, "You are here!", conf.main.get("parent")))
    ctx.out(formats.snapshot_tree(items))


def snapshot_config(ctx: Context, p: dict[str, Any]) -> dict[str, str]:
    """`qm config <vmid> --snapshot <name>`: that section (load_snapshot_config), cipassword
    masked as API vm_config does."""
    if p.get("current"):
        both = "cannot use 'snapshot' parameter with 'current'"
        raise ParamErrors({"current": both, "snapshot": both})
    conf = dict(_snap(ctx.load(p["vmid"]), p["snapshot"]))
    if conf.get("cipassword"):
        conf["cipassword"] = "**********"
    return conf
