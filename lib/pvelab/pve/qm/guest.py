"""`qm guest cmd|exec|exec-status` (and the `qm agent` alias) through the guest agent."""

from __future__ import annotations

import base64
import sys
import time
from typing import Any

from pvelab.pve import vmstate
from pvelab.pve.qm import formats
from pvelab.pve.qm.context import Context, QmError
from pvelab.pve.qm.options import ParamErrors
from pvelab.pve.qm.power import qga_check_running
from pvelab.pve.qmp import MonitorCommandError, MonitorError

# QS9 API2/Qemu/Agent.pm $guest_agent_commands (the `command` enum).
GUEST_COMMANDS = (
    "fsfreeze-freeze", "fsfreeze-status", "fsfreeze-thaw", "fstrim", "get-fsinfo",
    "get-host-name", "get-memory-block-info", "get-memory-blocks", "get-osinfo", "get-time",
    "get-timezone", "get-users", "get-vcpus", "info", "network-get-interfaces", "ping",
    "shutdown", "suspend-disk", "suspend-hybrid", "suspend-ram",
)  # fmt: skip
STDIN_LIMIT = 1024 * 1024


def assert_agent_available(ctx: Context, vmid: int) -> None:
    """Agent.pm assert_agent_available, in PVE's order (config first, then 3 s ping)."""
    conf = ctx.load(vmid).main
    if "agent" not in conf:
        raise QmError("No QEMU guest agent configured")
    if not vmstate.running_pid(ctx.paths, vmid):
        raise QmError(f"VM {vmid} is not running")
    if not qga_check_running(ctx, vmid, nowarn=True):
        raise QmError("QEMU guest agent is not running")


def cmd(ctx: Context, p: dict[str, Any]) -> None:
    """`qm guest cmd <vmid> <command>`: `guest-<command>`, printed like $print_agent_result."""
    vmid = p["vmid"]
    assert_agent_available(ctx, vmid)
    try:
        result = ctx.qga(vmid).command(f"guest-{p['command']}")
    except MonitorCommandError as exc:
        # The generic command does not check agent errors: PVE prints them, exit 0.
        result = {"error": exc.error}
    except MonitorError as exc:
        raise QmError(str(exc)) from exc
    ctx.out(formats.agent_result(result))


def _agent_call(ctx: Context, vmid: int, execute: str, arguments: dict[str, Any]) -> Any:
    """mon_cmd + check_agent_error: agent errors become `Agent error: <desc>`."""
    try:
        return ctx.qga(vmid).command(execute, arguments)
    except MonitorCommandError as exc:
        raise QmError(f"Agent error: {exc.desc}") from exc
    except MonitorError as exc:
        raise QmError(str(exc)) from exc


def _decode_output(data: str) -> str:
    return base64.b64decode(data).decode("utf-8", errors="replace")


def exec_status_result(vmid: int, ctx: Context, pid: int) -> dict[str, Any]:
    """qemu_exec_status: out/err data decoded, booleans as 1/0."""
    res = _agent_call(ctx, vmid, "guest-exec-status", {"pid": pid}) or {}
    for key in ("out-data", "err-data"):
        if key in res:
            res[key] = _decode_output(res[key])
    return formats.booleans_to_ints(res)


def exec_(ctx: Context, p: dict[str, Any]) -> None:
    """`qm guest exec`: start a process, poll exec-status every 1 s up to --timeout (30)."""
    vmid = p["vmid"]
    sync = p.get("synchronous", True)
    if "timeout" in p and not sync:
        raise ParamErrors({"synchronous": "needs to be set for 'timeout'"})
    arguments: dict[str, Any] = {"capture-output": True}
    if p.get("pass-stdin"):  # read before anything is checked, as the CLI code does
        data = sys.stdin.buffer.read(STDIN_LIMIT + 1)
        if len(data) > STDIN_LIMIT:
            raise QmError("'input-data' (STDIN) is limited to 1 MiB, aborting")
        arguments["input-data"] = base64.b64encode(data).decode()
    argv = p.get("extra-args") or []
    if argv:
        arguments.update(path=argv[0], arg=argv[1:])
    if "input-data" not in arguments and "path" not in arguments:
        raise QmError("command or input-data (or both) required")  # QS8 Agent.pm qemu_exec
    assert_agent_available(ctx, vmid)  # agent_cmd: load_config, agent_available
    res = _agent_call(ctx, vmid, "guest-exec", arguments)
    if sync:
        res = _poll_exec(ctx, vmid, res, p.get("timeout", 30))
    ctx.out(formats.perl_json(res) + "\n")


def _poll_exec(ctx: Context, vmid: int, res: dict[str, Any], timeout: int) -> dict[str, Any]:
    started = time.monotonic()
    while True:
        if timeout and time.monotonic() - started > timeout:
            ctx.stderr.write("timeout reached, returning pid\n")
            return res
        status = exec_status_result(vmid, ctx, res["pid"])
        if status.get("exited"):
            return status
        time.sleep(1)


def exec_status(ctx: Context, p: dict[str, Any]) -> None:
    """`qm guest exec-status <vmid> <pid>`."""
    vmid = p["vmid"]
    assert_agent_available(ctx, vmid)
    pid = int(p["pid"])  # checked by the schema (type integer)
    ctx.out(formats.perl_json(exec_status_result(vmid, ctx, pid)) + "\n")
