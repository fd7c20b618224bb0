"""`qm migrate <vmid> <target>`: PVE 8.4's offline migration to the lab's other node.

The API's checks come from QS8 `src/PVE/API2/Qemu.pm` `migrate_vm`, the task log from PGC
`AbstractMigrate.pm` `migrate` and QS8 `src/PVE/QemuMigrate.pm` `prepare`/`phase1`/
`phase3_cleanup`. The lab's disks are files every node reaches (storage `local` is marked
`shared`), so like PVE on shared storage nothing is copied: the config moves to the target
node (`.vmlist`) and the target clears the `migrate` lock.

An HA-managed VM takes migrate_vm's HA branch (`Requesting HA migration ...`, then `ha-manager
migrate`); the HA stack's own call (type 'ha', pvelab.pve.ha.agent) migrates. Lab limit: no
online (live) migration of a running VM; asked by the HA stack, that migration task fails, so
the VM stays where it is (see pvelab.pve.ha.lrm).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from pvelab.pve import cluster, vmconf, vmstate
from pvelab.pve.ha import qmbranch
from pvelab.pve.qm import quorum
from pvelab.pve.qm.context import Context, QmError, check_lock
from pvelab.pve.qm.options import Command, Option

# PVE's migration holds `lock: migrate` for a few SSH round trips even with nothing to copy;
# the lab keeps it for this long so that observers can see it.
HOLD_SECONDS = float(os.environ.get("PVELAB_MIGRATE_SECONDS", "1"))
NODE_RE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?")


def node_name_error(value: str) -> str | None:
    """Format `pve-node` (PC `JSONSchema.pm` pve_verify_node_name)."""
    if NODE_RE.fullmatch(value):
        return None
    return "invalid format - value does not look like a valid node name\n"


COMMAND = Command(
    "migrate",
    ("vmid", "target"),
    (
        Option("online", "boolean"),
        Option("force", "boolean"),
        Option("migration_type", enum=("secure", "insecure")),
        Option("migration_network"),
        Option("with-local-disks", "boolean"),
        Option("targetstorage"),
        Option("bwlimit", "integer", minimum=0),
    ),
    arg_checks={"target": node_name_error},
)


def migrate(ctx: Context, p: dict[str, Any]) -> None:
    """API migrate_vm: checks before the worker (plain dies), then the `qmigrate` task."""
    vmid, target = p["vmid"], p["target"]
    ctx.task = False
    if target == ctx.node:
        raise QmError(
            f"400 Parameter verification failed.\ntarget: target is local node.\n{COMMAND.usage()}"
        )
    quorum.check_cfs_quorum(ctx)
    if cluster.node(target) is None:
        raise QmError(f"no such cluster node '{target}'")  # PCL `Cluster.pm` check_node_exists
    conf = ctx.load(vmid)
    check_lock(conf)
    online = vmstate.running_pid(ctx.paths, vmid) is not None
    if online and not p.get("online"):
        raise QmError("can't migrate running VM without --online")
    if not online and p.get("online"):
        ctx.warn("VM isn't running. Doing offline migration instead.")
    if qmbranch.migrate(ctx, vmid, target):  # HA-managed, not called by the HA stack
        return
    if online:
        raise QmError("pvelab: online migration is not supported by the lab's qm")
    ctx.task = True
    run(ctx, vmid, target)


def _log(ctx: Context, text: str, error: bool = False) -> None:
    """AbstractMigrate's $msg2text: `%F %H:%M:%S` local time, ` ERROR:` for errors."""
    prefix = time.strftime("%Y-%m-%d %H:%M:%S") + (" ERROR:" if error else "")
    ctx.out("".join(f"{prefix} {line}\n" for line in text.splitlines() if line))


def _duration(seconds: float) -> str:
    secs = int(seconds)
    return f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"


def run(ctx: Context, vmid: int, target: str) -> None:
    """The worker: AbstractMigrate::migrate for an offline VM on shared storage."""
    started = time.time()
    try:
        with ctx.lock_config(vmid):  # lock_vm
            _phases(ctx, vmid, target)
    except QmError as exc:
        _log(ctx, f"migration aborted (duration {_duration(time.time() - started)}): {exc}", True)
        raise QmError("migration aborted") from exc
    _log(ctx, f"migration finished successfully (duration {_duration(time.time() - started)})")


def _phases(ctx: Context, vmid: int, target: str) -> None:
    conf = ctx.load(vmid)  # prepare: "test if VM exists"
    check_lock(conf)
    if vmstate.running_pid(ctx.paths, vmid):
        raise QmError("can't migrate running VM without --online")
    _log(ctx, f"starting migration of VM {vmid} to node '{target}' ({cluster.address(target)})")
    conf.main["lock"] = "migrate"  # phase1
    quorum.check_config_writable(ctx, vmid)
    vmconf.write_conf(ctx.paths.conf(vmid), conf)
    time.sleep(HOLD_SECONDS)
    cluster.move(ctx.paths, vmid, target)  # phase3_cleanup: move_config_to_node
    # ... then `qm unlock <vmid>` on the target (over SSH in PVE; the same file here).
    moved = vmconf.load_conf(ctx.paths.conf(vmid))
    if moved is not None:
        moved.main.pop("lock", None)
        vmconf.write_conf(ctx.paths.conf(vmid), moved)
