"""qm's HA branch (QS8 API2/Qemu.pm vm_start / vm_stop / vm_shutdown / migrate_vm): for an HA-managed VM, qm
only queues a request with `ha-manager` and returns; the HA stack itself (type 'ha') bypasses it."""

from __future__ import annotations

from io import StringIO
from typing import Any

from pvelab.pve.ha import cli, config
from pvelab.pve.qm.context import Context, QmError
from pvelab.pve.qm.options import ParamErrors

DEFAULT_SHUTDOWN_TIMEOUT = 60  # vm_shutdown: `$param->{timeout} // 60`


class HAContext(Context):
    """A qm call made by the HA stack (`$rpcenv->{type} eq 'ha'`): acts on the VM directly."""


def _managed(ctx: Context, vmid: int) -> bool:
    return not isinstance(ctx, HAContext) and config.vm_is_ha_managed(ctx.paths, vmid)


def _queue(ctx: Context, argv: list[str]) -> None:
    """PVE::Tools::run_command(['ha-manager', ...]) inside the hastart/hastop worker."""
    out, err = StringIO(), StringIO()
    rc = cli.run(ctx.paths, argv, cli.Io(out, err))
    ctx.out(out.getvalue())
    if err.getvalue():
        ctx.warn(err.getvalue())  # the worker's stderr is part of the task output
    if rc != 0:
        raise QmError(f"command 'ha-manager {' '.join(argv)}' failed: exit code {rc}")


def start(ctx: Context, p: dict[str, Any]) -> bool:
    """`qm start` of an HA VM: `ha-manager set vm:<id> --state started`. True if handled."""
    vmid = p["vmid"]
    if not _managed(ctx, vmid):
        return False
    ctx.out(f"Requesting HA start for VM {vmid}\n")
    _queue(ctx, ["set", f"vm:{vmid}", "--state", "started"])
    return True


def stop(ctx: Context, p: dict[str, Any]) -> bool:
    """`qm stop` of an HA VM: `ha-manager crm-command stop vm:<id> 0`. True if handled."""
    vmid = p["vmid"]
    if not _managed(ctx, vmid) or p.get("migratedfrom"):
        return False
    if p.get("overrule-shutdown"):  # raise_param_exc: the CLI adds the usage
        raise ParamErrors({"overrule-shutdown": "Not applicable for HA resources."})
    ctx.out(f"Requesting HA stop for VM {vmid}\n")
    _queue(ctx, ["crm-command", "stop", f"vm:{vmid}", "0"])
    return True


def shutdown(ctx: Context, p: dict[str, Any]) -> bool:
    """`qm shutdown` of an HA VM (after vm_is_paused's check, power.shutdown's):
    `ha-manager crm-command stop vm:<id> <timeout, default 60>`. True if handled."""
    vmid = p["vmid"]
    if not _managed(ctx, vmid):
        return False
    timeout = p.get("timeout")
    timeout = DEFAULT_SHUTDOWN_TIMEOUT if timeout is None else timeout
    ctx.out(f"Requesting HA stop for VM {vmid}\n")
    _queue(ctx, ["crm-command", "stop", f"vm:{vmid}", str(timeout)])
    return True


def migrate(ctx: Context, vmid: int, target: str) -> bool:
    """`qm migrate` of an HA VM (after migrate_vm's checks): the `hamigrate` worker prints
    `Requesting HA migration ...` and runs `ha-manager migrate vm:<id> <target>`. True if
    handled."""
    if not _managed(ctx, vmid):
        return False
    ctx.task = True
    ctx.out(f"Requesting HA migration for VM {vmid} to node {target}\n")
    _queue(ctx, ["migrate", f"vm:{vmid}", target])
    return True
