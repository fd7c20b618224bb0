"""One volume's snapshot the way PVE takes it: QMP while QEMU has it open, qemu-img when not."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from typing import Any

from pvelab.pve import storage, vmstate
from pvelab.pve.qm.context import Context, QmError
from pvelab.pve.qm.power import qga_check_running
from pvelab.pve.qm.version import flavour
from pvelab.pve.qmp import MonitorCommandError, MonitorError
from pvelab.pve.storage import Volume
from pvelab.pve.vmconf import AgentOptions, ConfError, agent_enabled, parse_agent

# QS8 QMPClient.pm: the block snapshot commands get 10 minutes.
QMP_SNAPSHOT_TIMEOUT = 600.0


def _volume(ctx: Context, vmid: int, volid: str) -> Volume:
    try:
        return storage.volume(volid, vmid, ctx.paths)
    except ConfError as exc:
        raise QmError(str(exc)) from exc


def _qmp(ctx: Context, vmid: int, execute: str, **arguments: Any) -> Any:
    """mon_cmd: a failed QMP command dies with the monitor's message."""
    try:
        return ctx.qmp(vmid).command(execute, arguments or None, timeout=QMP_SNAPSHOT_TIMEOUT)
    except MonitorError as exc:
        raise QmError(str(exc)) from exc


def qemu_img_snapshot(ctx: Context, flag: str, name: str, vol: Volume) -> None:
    """`qemu-img snapshot -c|-a|-d <name> <file>` through PVE's run_command (output to the log)."""
    cmd = [shutil.which("qemu-img") or "/usr/bin/qemu-img", "snapshot", flag, name, str(vol.path)]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).splitlines():
        ctx.out(line + "\n")
    if proc.returncode != 0:
        raise QmError(f"command '{shlex.join(cmd)}' failed: exit code {proc.returncode}")


def attached_device(ctx: Context, vmid: int, volid: str) -> str | None:
    """`drive-<key>` of the running VM's drive holding `volid` (QS8 qemu_volume_snapshot_delete)."""
    if not vmstate.running_pid(ctx.paths, vmid):
        return None
    device = None
    for key, value in storage.drives(ctx.load(vmid).main):
        if storage.drive_volid(value) == volid:
            device = f"drive-{key}"
    return device


def create(ctx: Context, vmid: int, key: str, volid: str, name: str) -> None:
    """qemu_volume_snapshot: QMP internal snapshot while running, else the storage's way."""
    vol = _volume(ctx, vmid, volid)
    if vmstate.running_pid(ctx.paths, vmid) and vol.format == "qcow2":
        if flavour().internal_snapshot_notice:  # QS9 qemu_volume_snapshot
            ctx.out("internal qemu snapshot\n")
        _qmp(ctx, vmid, "blockdev-snapshot-internal-sync", device=f"drive-{key}", name=name)
        return
    if vol.format != "qcow2":
        raise QmError("can't snapshot this image format")
    qemu_img_snapshot(ctx, "-c", name, vol)


def delete(ctx: Context, vmid: int, volid: str, name: str) -> None:
    """qemu_volume_snapshot_delete: QMP when the running VM has the volume attached."""
    vol = _volume(ctx, vmid, volid)
    device = attached_device(ctx, vmid, volid)
    if device and vol.format == "qcow2":
        _qmp(ctx, vmid, "blockdev-snapshot-delete-internal-sync", device=device, name=name)
        return
    if vol.format != "qcow2":
        raise QmError("can't delete snapshot for this image format")
    if not device:
        qemu_img_snapshot(ctx, "-d", name, vol)


def rollback(ctx: Context, vmid: int, volid: str, name: str) -> None:
    """volume_snapshot_rollback (the VM is stopped by then)."""
    vol = _volume(ctx, vmid, volid)
    if vol.format != "qcow2":
        raise QmError("can't rollback snapshot this image format")
    qemu_img_snapshot(ctx, "-a", name, vol)


def freeze_needed(ctx: Context, vmid: int, conf: dict[str, str]) -> bool:
    """__snapshot_check_freeze_needed of a running VM (snapshot without vmstate).

    PVE 8: agent enabled and answering (a dead agent warns). PVE 9: guest_fs_freeze_applicable,
    which honours `freeze-fs` and says in the task log why it skips."""
    if not flavour().snapshot_freeze_applicable:
        return agent_enabled(conf) and qga_check_running(ctx, vmid, nowarn=False)
    try:
        agent = parse_agent(conf.get("agent"))
    except ConfError:
        agent = AgentOptions()
    if not (agent.enabled and agent.freeze_fs):
        ctx.out("skipping guest filesystem freeze - disabled in VM options\n")
        return False
    if not qga_check_running(ctx, vmid, nowarn=True):
        ctx.out("skipping guest filesystem freeze - agent configured but not running?\n")
        return False
    try:
        frozen = ctx.qga(vmid).command("guest-fsfreeze-status") == "frozen"
    except MonitorCommandError as exc:
        ctx.warn(f"unable to check guest fs freeze status - Agent error: {exc.desc}")
        frozen = False
    except MonitorError as exc:
        ctx.warn(f"unable to check guest fs freeze status - {exc}")
        frozen = False
    if frozen:
        ctx.out("skipping guest filesystem freeze - already frozen\n")
        return False
    return True


def freeze(ctx: Context, vmid: int, *, thaw: bool) -> None:
    """__snapshot_freeze: agent fsfreeze; a failure is only a warning.

    PVE 8 sends a bare mon_cmd, which does not die on an agent's error reply (QMPClient.pm
    hands `{error => ...}` back), so only transport failures warn. PVE 9 checks the reply:
    guest_fs_freeze dies `unable to freeze guest fs - <desc>`, guest_fs_thaw `Agent error:`."""
    command = "guest-fsfreeze-thaw" if thaw else "guest-fsfreeze-freeze"
    pve9 = flavour().snapshot_freeze_applicable
    try:
        ctx.qga(vmid).command(command)
    except MonitorCommandError as exc:
        if pve9 and thaw:
            ctx.warn(f"{command} problems - Agent error: {exc.desc}")
        elif pve9:
            ctx.warn(f"unable to freeze guest fs - {exc.desc}")
    except MonitorError as exc:
        ctx.warn(f"{command} problems - {exc}" if thaw or not pve9 else str(exc))


def pause(ctx: Context, vmid: int) -> bool:
    """PVE's `savevm-start` without a state file: halt a running VM; True if it was running."""
    if not _qmp(ctx, vmid, "query-status").get("running"):
        return False
    _qmp(ctx, vmid, "stop")
    return True


def resume(ctx: Context, vmid: int, was_running: bool) -> None:
    """PVE's `savevm-end`: resume what `pause` halted; a failure is only a warning."""
    if not was_running:
        return
    try:
        _qmp(ctx, vmid, "cont")
    except QmError as exc:
        ctx.warn(str(exc))
