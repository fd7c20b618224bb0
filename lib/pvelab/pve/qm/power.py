"""`qm start|stop|shutdown|reboot|wait`: PVE's vm_start / _do_vm_stop on a real QEMU."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

from pvelab.pve import accel, vmconf, vmstate
from pvelab.pve.ha import qmbranch
from pvelab.pve.qemu import qemu_command
from pvelab.pve.qm import cipending, quorum, setconf
from pvelab.pve.qm.context import Context, QmError, check_lock
from pvelab.pve.qmp import MonitorError
from pvelab.pve.vmconf import VMConf, agent_enabled

PAUSED_STATES = ("paused", "prelaunch", "suspended")


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def start(ctx: Context, p: dict[str, Any]) -> None:
    """vm_start: lock, checks, leftover pending changes applied, QEMU launched (daemonized)."""
    quorum.check_cfs_quorum(ctx)  # the API's first check, before HA and load_config
    if qmbranch.start(ctx, p):  # HA-managed: only `Requesting HA start` (QS8 vm_start)
        return
    vmid = p["vmid"]
    ctx.load(vmid)
    with ctx.lock_config(vmid):
        conf = ctx.load(vmid)
        pid = vmstate.running_pid(ctx.paths, vmid)
        if conf.lock == "backup" and pid:
            ctx.qmp(vmid).command("cont")  # vm_resume: the backup holds the VM paused
            return
        if not p.get("skiplock") and conf.lock != "suspended":
            check_lock(conf)
        if pid:
            raise QmError(f"VM {vmid} already running")
        if conf.pending:  # left by a poweroff from inside the guest (`qm cleanup` path)
            setconf.apply_pending(conf)
            vmconf.write_conf(ctx.paths.conf(vmid), conf)
        # The cloud-init data is computed, no ISO is built: the lab's QEMU gets no drive for it.
        cipending.regenerate_at_start(ctx, vmid, conf, p.get("migratedfrom"))
        launch(ctx, vmid, conf, p.get("timeout"))


def launch(ctx: Context, vmid: int, conf: VMConf, timeout: int | None) -> None:
    """Run QEMU with -daemonize; returns once it daemonized (not when the guest booted)."""
    kind = accel.probe(ctx.paths).accel
    try:
        cmd = qemu_command(conf.main, vmid, ctx.paths, kind)
    except (vmconf.ConfError, ValueError) as exc:
        raise QmError(f"start failed: {exc}") from exc
    for directory in (ctx.paths.run_dir, ctx.paths.log_dir):
        directory.mkdir(parents=True, exist_ok=True)
    vmstate.cleanup(ctx.paths, vmid)  # stale sockets of a killed QEMU
    memory_gib = int(conf.get("memory", "512") or 512) // 1024
    limit = timeout if timeout is not None else max(30, memory_gib)
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=limit
        )
    except subprocess.TimeoutExpired as exc:
        raise QmError(f"start failed: command '{' '.join(cmd)}' failed: got timeout") from exc
    for line in (proc.stdout + proc.stderr).splitlines():
        ctx.out(line + "\n")  # QEMU's own messages end up in the task log
    if proc.returncode != 0:
        raise QmError(f"start failed: QEMU exited with code {proc.returncode}")


def qga_check_running(ctx: Context, vmid: int, nowarn: bool) -> bool:
    """guest-ping with a 3 s timeout."""
    try:
        ctx.qga(vmid).command("guest-ping", timeout=3)
    except MonitorError as exc:
        if not nowarn:
            ctx.warn(f"QEMU Guest Agent is not running - {exc}")
        return False
    return True


def _terminate(ctx: Context, vmid: int, pid: int) -> None:
    """The tail of _do_vm_stop after SIGTERM: 10 s grace, then SIGKILL."""
    if not vmstate.wait_stopped(ctx.paths, vmid, 10):
        ctx.warn("VM still running - terminating now with SIGKILL")
        _kill(pid, signal.SIGKILL)
        time.sleep(1)
    stop_cleanup(ctx, vmid)


def stop_cleanup(ctx: Context, vmid: int) -> None:
    """vm_stop_cleanup(..., $apply_pending_changes = 1, $noerr = 1) at the end of _do_vm_stop:
    runtime files go, [PENDING] is applied; a failure there is only a warning."""
    vmstate.cleanup(ctx.paths, vmid)
    try:
        conf = ctx.load(vmid)
        if conf.pending:
            setconf.apply_pending(conf)
            quorum.check_config_writable(ctx, vmid)
            vmconf.write_conf(ctx.paths.conf(vmid), conf)
    except QmError as exc:
        ctx.warn(str(exc))


def do_vm_stop(
    ctx: Context, vmid: int, *, skiplock: bool, timeout: int | None, shutdown: bool, force: bool
) -> None:
    """PVE's _do_vm_stop (QS9), called with the config lock held."""
    pid = vmstate.running_pid(ctx.paths, vmid)
    if not pid:
        return
    loaded = ctx.load(vmid)
    if not skiplock:
        check_lock(loaded)
    conf = loaded.main
    err = None
    try:
        if not shutdown:
            ctx.qmp(vmid).command("quit", timeout=60)
        elif agent_enabled(conf) and qga_check_running(ctx, vmid, nowarn=False):
            ctx.qga(vmid).command("guest-shutdown", timeout=timeout)
        else:
            ctx.qmp(vmid).command("system_powerdown")
    except MonitorError as exc:
        err = exc
    if err is None:
        if vmstate.wait_stopped(ctx.paths, vmid, 60 if timeout is None else timeout):
            stop_cleanup(ctx, vmid)
            return
        if not force:
            raise QmError("VM quit/powerdown failed - got timeout")
        ctx.warn("VM still running - terminating now with SIGTERM")
    else:
        if not vmstate.running_pid(ctx.paths, vmid):
            ctx.warn("Unexpected: VM shutdown command failed, but VM not running anymore..")
            vmstate.cleanup(ctx.paths, vmid)
            return
        if not force:
            raise QmError("VM quit/powerdown failed")
        ctx.warn("VM quit/powerdown failed - terminating now with SIGTERM")
    _kill(pid, signal.SIGTERM)
    _terminate(ctx, vmid, pid)


def stop(ctx: Context, p: dict[str, Any]) -> None:
    """`qm stop`: QMP quit, wait --timeout (60), SIGTERM, 10 s, SIGKILL."""
    if qmbranch.stop(ctx, p):  # HA-managed: only `Requesting HA stop` (QS8 vm_stop)
        return
    vmid = p["vmid"]
    ctx.assert_config_exists_on_node(vmid)
    if p.get("overrule-shutdown"):
        overrule_shutdown(ctx, vmid)
    with ctx.lock_config(vmid):
        do_vm_stop(
            ctx, vmid, skiplock=bool(p.get("skiplock")), timeout=p.get("timeout"),
            shutdown=False, force=True,
        )  # fmt: skip


def vm_is_paused(ctx: Context, vmid: int) -> bool:
    """QS8 vm_is_paused($vmid, 1): `eval { assert_config_exists_on_node; mon_cmd(query-status) };
    warn "$@\n" if $@` - every failure is a warning (its own newline plus warn's) on stderr."""
    try:
        ctx.assert_config_exists_on_node(vmid)
        if not vmstate.running_pid(ctx.paths, vmid):
            raise QmError(f"VM {vmid} not running")  # Monitor.pm qmp_cmd
        status = ctx.qmp(vmid).command("query-status", timeout=5)["status"]
    except (QmError, MonitorError, TypeError, KeyError) as exc:
        ctx.stderr.write(f"{exc}\n\n")
        return False
    return status in PAUSED_STATES


def _paused_check(ctx: Context, vmid: int, force: bool) -> bool:
    """vm_shutdown's check before its worker; returns whether to shut down (vs stop)."""
    if not vm_is_paused(ctx, vmid):
        return True
    if not force:
        raise QmError("VM is paused - cannot shutdown")
    ctx.stderr.write("VM is paused - stop instead of shutdown\n")
    return False


def shutdown(ctx: Context, p: dict[str, Any]) -> None:
    """`qm shutdown`: agent guest-shutdown if it answers, else ACPI; waits --timeout (60)."""
    vmid = p["vmid"]
    force = bool(p.get("forceStop"))
    graceful = _paused_check(ctx, vmid, force)  # QS8 vm_shutdown: before the HA branch
    if qmbranch.shutdown(ctx, p):  # HA-managed: the HA stop request
        return
    ctx.assert_config_exists_on_node(vmid)  # the worker's check_running
    with ctx.lock_config(vmid), shutdown_task_marker(ctx, vmid):
        do_vm_stop(
            ctx, vmid, skiplock=bool(p.get("skiplock")), timeout=p.get("timeout"),
            shutdown=graceful, force=force or not graceful,
        )  # fmt: skip


def reboot(ctx: Context, p: dict[str, Any]) -> None:
    """`qm reboot`: shutdown semantics, then the restart qmeventd + `qm cleanup` would do.

    PVE returns once the VM is stopped and restarts it asynchronously; the lab has no
    qmeventd, so the restart happens here, before `qm reboot` returns.
    """
    vmid = p["vmid"]
    ctx.task = False  # QS8 vm_reboot before its fork_worker: plain dies
    if vm_is_paused(ctx, vmid):  # its warnings first, then check_running's die
        raise QmError("VM is paused - cannot shutdown")
    ctx.assert_config_exists_on_node(vmid)
    if not vmstate.running_pid(ctx.paths, vmid):  # exit 2: the pidfile's failed open (ENOENT)
        raise QmError(f"VM {vmid} not running", rc=2)
    ctx.task = True
    with ctx.lock_config(vmid):
        do_vm_stop(ctx, vmid, skiplock=False, timeout=p.get("timeout"), shutdown=True, force=False)
    start(ctx, {"vmid": vmid})


def wait(ctx: Context, p: dict[str, Any]) -> None:
    """`qm wait`: poll every second until QEMU is gone; 0/absent timeout = forever."""
    vmid = p["vmid"]
    ctx.assert_config_exists_on_node(vmid)
    pid = vmstate.running_pid(ctx.paths, vmid)
    if not pid:
        return
    ctx.out(f"waiting until VM {vmid} stops (PID {pid})\n")
    timeout = p.get("timeout") or 0
    deadline = time.monotonic() + timeout
    while vmstate.running_pid(ctx.paths, vmid):
        if timeout and time.monotonic() >= deadline:
            raise QmError("wait failed - got timeout")
        time.sleep(0.2)


# --- overrule-shutdown: the lab's stand-in for PVE's task list -------------------------


def _marker(ctx: Context, vmid: int) -> Any:
    return ctx.paths.lock_dir / f"qmshutdown-{vmid}.task"


class shutdown_task_marker:  # noqa: N801 - used like contextlib helpers
    """Records a running `qm shutdown` (pid + UPID) so `stop --overrule-shutdown` finds it."""

    def __init__(self, ctx: Context, vmid: int) -> None:
        self.path = _marker(ctx, vmid)
        pid = os.getpid()
        self.upid = (
            f"UPID:{ctx.node}:{pid:08X}:00000000:{int(time.time()):08X}:qmshutdown:{vmid}:root@pam:"  # noqa: E501
        )

    def __enter__(self) -> None:
        self.path.write_text(f"{os.getpid()} {self.upid}\n")

    def __exit__(self, *exc: object) -> None:
        try:
            if self.path.read_text().split()[0] == str(os.getpid()):
                self.path.unlink()
        except (OSError, IndexError):
            pass


def overrule_shutdown(ctx: Context, vmid: int) -> None:
    """Abort a running `qm shutdown` of this VM (SIGTERM) and say so, as PVE does."""
    try:
        pid_text, upid = _marker(ctx, vmid).read_text().split()[:2]
    except (OSError, ValueError):
        return
    pid = int(pid_text)
    if "shutdown" not in vmstate.read_cmdline(pid):
        return  # that task is gone (and its pid maybe reused)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    ctx.out(f"overruled qmshutdown tasks: {upid}\n")
