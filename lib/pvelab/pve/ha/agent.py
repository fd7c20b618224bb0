"""PVE::HA::Resources::PVEVM for the lab: start, shutdown and migrate through the stand-in qm's
power and migrate code, called as the HA stack (an HAContext, so qm's HA branch is bypassed). Each call's task output goes
to log/ha-tasks.log, as PVE keeps the worker's task log."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from io import StringIO
from typing import Any

from pvelab.paths import LabPaths
from pvelab.pve import cluster, vmstate
from pvelab.pve.ha.qmbranch import DEFAULT_SHUTDOWN_TIMEOUT, HAContext
from pvelab.pve.qm import migrate as qm_migrate
from pvelab.pve.qm import power
from pvelab.pve.qm.context import Context, QmError


class PowerAgent:
    """The VM resource agent of one node."""

    def __init__(self, paths: LabPaths, node: str) -> None:
        self.paths, self.node = paths, node

    def running(self, vmid: int) -> bool:
        """check_running: QEMU alive (pidfile + /proc)."""
        return vmstate.running_pid(self.paths, vmid) is not None

    def start(self, vmid: int) -> None:
        """PVEVM::start: vm_start as type 'ha' (the LRM then checks whether it runs)."""
        self._task("qmstart", vmid, power.start, {"vmid": vmid})

    def shutdown(self, vmid: int, timeout: int | None) -> None:
        """PVEVM::shutdown: timeout > 0 is vm_shutdown with forceStop, 0 is vm_stop."""
        timeout = DEFAULT_SHUTDOWN_TIMEOUT if timeout is None else timeout
        if timeout:
            params = {"vmid": vmid, "timeout": timeout, "forceStop": True}
            self._task("qmshutdown", vmid, power.shutdown, params)
        else:
            self._task("qmstop", vmid, power.stop, {"vmid": vmid})

    def migrate(self, vmid: int, target: str, online: bool) -> bool:
        """PVEVM::migrate: a relocation (not online) shuts a running VM down first (timeout 60),
        then migrate_vm with force and with-local-disks; True if the config left this node.
        The lab's migrate_vm has no live migration: for a running VM that task fails."""
        if not online and self.running(vmid):
            self.shutdown(vmid, None)
        params = {"vmid": vmid, "target": target, "online": online, "force": True,
                  "with-local-disks": True}  # fmt: skip
        self._task("qmigrate", vmid, qm_migrate.migrate, params)
        return not cluster.on_node(self.paths, vmid, self.node)

    def _task(
        self, kind: str, vmid: int, action: Callable[[Context, dict[str, Any]], None], p: dict
    ) -> None:
        out = StringIO()
        ctx = HAContext(self.paths, self.node, stdout=out, stderr=out, task=True)
        try:
            action(ctx, p)
            out.write("TASK OK\n")
        except QmError as exc:  # a failed task: the LRM only sees whether the VM runs
            out.write(f"TASK ERROR: {exc}\n")
        self._record(kind, vmid, out.getvalue())

    def _record(self, kind: str, vmid: int, text: str) -> None:
        self.paths.log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        lines = "".join(
            f"{stamp} {self.node} {kind}:{vmid}: {line}\n" for line in text.splitlines()
        )
        fd = os.open(self.paths.log_dir / "ha-tasks.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)
