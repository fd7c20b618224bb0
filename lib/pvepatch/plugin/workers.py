"""pytest-xdist: the run distributed VM by VM, and the state a worker hands its controller.

What a worker's per-VM report carries (its VM, stage, counters, the VMs it left down and the VM's
record when it changed) and what the controller makes of it; the hooks are methods of the one
plugin object (pvepatch.plugin.core.PvepatchPlugin mixes WorkerExchange in).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pvepatch.cycle.options import Fleet
from pvepatch.cycle.record import VMRecord, record_from_wire, record_to_wire
from pvepatch.inventory import Inventory, Target
from pvepatch.transport.command import ReadOnlyGuard

# What a per-VM test report carries (a dict; serializable, so it crosses from an xdist worker):
# vm, stage, stage_ends, mode, and from a worker its id, mutating_sent and down.
PAYLOAD = "pvepatch"
RECORD = "pvepatch_record"  # on a worker's report whose VM record changed: record_to_wire()

# Why pvepatch distributes only with --dist loadgroup (one group per VM).
_DIST_REFUSED = {
    "each": "it would run every VM's stages on every worker",
    "loadscope": "it groups by module, so one VM's stages would run on several workers",
    "loadfile": "it groups by file, so one VM's stages would run on several workers",
    "worksteal": "it moves tests between workers, so one VM's stages could run out of order",
}


class WorkerExchange:
    """The plugin's hooks between xdist workers and their controller. Its state is the plugin's
    (shipped, worker_sent, worker_down, mode_known)."""

    config: pytest.Config
    inventory: Inventory
    guard: ReadOnlyGuard
    fleet: Fleet
    mode: str
    mode_known: bool
    records: dict[str, VMRecord]
    stage_last: set[str]
    shipped: dict[str, str]
    worker_sent: dict[str, int]
    worker_down: dict[str, dict[str, str]]
    record: Callable[[Target], VMRecord]
    _say_mode: Callable[[], None]

    def _attach(
        self, report: pytest.TestReport, item: pytest.Item, target: Target, stage: str
    ) -> None:
        """Mark a per-VM report with its VM and stage (the audit reads them from the report, in
        one process or on the xdist controller); from a worker, add its counters, the VMs it left
        down, and the VM's record when it changed since the last report."""
        payload: dict[str, Any] = {
            "vm": target.name,
            "stage": stage,
            "stage_ends": report.when == "teardown" and item.nodeid in self.stage_last,
            "mode": self.mode,
        }
        workerinput = getattr(self.config, "workerinput", None)
        if workerinput is not None:
            payload.update(self._worker_state(workerinput["workerid"]))
            wire = record_to_wire(self.record(target))
            if self.shipped.get(target.name) != wire:
                self.shipped[target.name] = wire
                setattr(report, RECORD, wire)
        setattr(report, PAYLOAD, payload)

    def _worker_state(self, worker: str) -> dict[str, Any]:
        return {
            "worker": worker,
            "mutating_sent": self.guard.mutating_sent,
            "down": dict(self.fleet.down),
        }

    def _hand_over(self) -> None:
        """In a worker, at its end: its final state, sent to the controller when it finishes."""
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:
            state = self._worker_state(self.config.workerinput["workerid"])  # type: ignore[attr-defined]
            workeroutput[PAYLOAD] = {**state, "mode": self.mode}

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Any:
        """Before any reporter reads a report from a worker: take its VM record, counters and
        left-down VMs, and give it the node id a serial run has (without xdist's `@<vm>`)."""
        payload = getattr(report, PAYLOAD, None)
        if isinstance(payload, dict) and not hasattr(self.config, "workerinput"):
            self._receive(report, payload)  # (a worker's own reports leave as they are)
        return (yield)

    def _receive(self, report: pytest.TestReport, payload: dict[str, Any]) -> None:
        vm = payload["vm"]
        report.nodeid = report.nodeid.removesuffix(f"@{vm}")
        wire = report.__dict__.pop(RECORD, None)  # consumed here: no later reporter sees raw output
        if wire is not None:
            self.records[vm] = record_from_wire(wire, self.inventory.target(vm))
        if "worker" in payload:
            self._learn_from_worker(payload)

    def _learn_from_worker(self, state: dict[str, Any]) -> None:
        worker = state["worker"]
        self.worker_sent[worker] = max(state["mutating_sent"], self.worker_sent.get(worker, 0))
        self.worker_down[worker] = dict(state["down"])
        self.fleet.down.clear()  # the controller's view: the union of what each worker left down
        for down in self.worker_down.values():
            self.fleet.down.update(down)
        if not self.mode_known:
            self.mode, self.mode_known = state["mode"], True
            self._say_mode()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """One work unit per VM (schedule.VMGroupScheduling)."""
        if config.getoption("dist") != "loadgroup":
            return None
        from pvepatch.plugin.schedule import VMGroupScheduling  # xdist is loaded: it asks

        return VMGroupScheduling(config, log, [t.name for t in self.inventory.targets])

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """An xdist worker finished: its final counters (a crashed one keeps its last report's)."""
        state = getattr(node, "workeroutput", {}).get(PAYLOAD)
        if state:
            self._learn_from_worker(state)


def distribute_by_vm(config: pytest.Config) -> None:
    """Under pytest-xdist (-n, --tx) pvepatch distributes with `--dist loadgroup`, one group per
    VM, so each VM's stages run in order on one worker; any other explicit --dist is refused
    before anything is touched. (xdist turns a bare `-n` into `--dist load`, which is switched.)"""
    if hasattr(config, "workerinput"):
        # A worker names each item with its group (`@<vm>`, which the controller's scheduler
        # groups by) only when it knows the run is loadgroup; it parsed only the command line.
        config.option.loadgroup = True
        return
    dist = config.getoption("dist", "no")  # "no" also when xdist is not loaded at all
    if dist == "no":
        return
    if dist == "load":
        config.option.dist = "loadgroup"
    if dist in ("load", "loadgroup"):
        # The run goes VM by VM in inventory order (the first ones first: canaries), not
        # the biggest group first.
        config.option.loadscopereorder = False
        return
    raise pytest.UsageError(
        f"pvepatch: --dist {dist} is refused: {_DIST_REFUSED.get(dist, 'unknown mode')}. "
        "pvepatch distributes with --dist loadgroup (one group per VM, its stages in order on "
        "one worker): give -n N alone. Nothing was touched."
    )
