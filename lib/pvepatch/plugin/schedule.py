"""pytest-xdist scheduling for pvepatch: one work unit per VM (`--dist loadgroup`), in inventory
order, so each VM's stages run in order on one worker."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from xdist.scheduler import LoadGroupScheduling


class VMGroupScheduling(LoadGroupScheduling):
    """xdist's loadgroup, grouping a test by its VM even when the worker's node id lacks the
    `@<group>` suffix (xdist 3.8 sets it through `item._nodeid`, which pytest 9 no longer
    reads): the VM is the test's parameter id, matched against the inventory's VM names."""

    def __init__(self, config: pytest.Config, log: Any, vms: Iterable[str]) -> None:
        super().__init__(config, log)
        self.vms = sorted(vms, key=len, reverse=True)  # `pihole-backup` before `pihole`

    def _split_scope(self, nodeid: str) -> str:
        if nodeid.rfind("@") > nodeid.rfind("]"):
            return super()._split_scope(nodeid)
        return vm_of_nodeid(nodeid, self.vms) or nodeid


def vm_of_nodeid(nodeid: str, vms: Iterable[str]) -> str | None:
    """The VM a test runs for, from its node id's parameter id (`test_x[pbs]`, or with other
    parameters, `test_x[pbs-udp]`); None for a test of no VM. `vms`: longest names first."""
    name = nodeid.rsplit("::", 1)[-1]
    if not name.endswith("]") or "[" not in name:
        return None
    params = f"-{name[name.index('[') + 1 : -1]}-"
    return next((vm for vm in vms if f"-{vm}-" in params), None)
