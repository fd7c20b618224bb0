"""The one pvepatch plugin object per run: its state, and the hooks that order, gate and sum up."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from pvepatch.audit.redact import redact_text
from pvepatch.audit.summary import junit_properties
from pvepatch.cycle.actions import VMCycle
from pvepatch.cycle.options import Fleet, Options
from pvepatch.cycle.record import VMRecord, verdict
from pvepatch.cycle.snapshot import human_age
from pvepatch.errors import one_line
from pvepatch.inventory import Inventory, Target
from pvepatch.plugin.interrupts import InterruptHooks
from pvepatch.plugin.mode import PATCH, VERIFY, belongs_to_verify, decide_mode, stage_of
from pvepatch.plugin.workers import WorkerExchange
from pvepatch.transport.command import ReadOnlyGuard
from pvepatch.transport.connections import Connections

PLUGIN_NAME = "pvepatch-run"


@dataclass
class PvepatchPlugin(InterruptHooks, WorkerExchange):
    """State and hooks of one pvepatch run, registered by pytest_configure (like pytest's
    StepwisePlugin). The mode is decided once, after pytest's own deselection. Its hooks for
    interrupts (pvepatch.plugin.interrupts) and xdist workers (pvepatch.plugin.workers) are
    mixed in: one object, its state all here."""

    config: pytest.Config
    inventory: Inventory
    options: Options
    guard: ReadOnlyGuard
    connections: Connections
    mode: str = VERIFY
    fleet: Fleet = field(default_factory=Fleet)
    records: dict[str, VMRecord] = field(default_factory=dict)
    cycles: dict[str, VMCycle] = field(default_factory=dict)
    last_item: dict[str, str] = field(default_factory=dict)  # VM name -> its last test's nodeid
    stage_last: set[str] = field(default_factory=set)  # nodeids of the last test of a VM's stage
    shipped: dict[str, str] = field(default_factory=dict)  # in a worker: VM -> last record sent
    worker_sent: dict[str, int] = field(default_factory=dict)  # on the controller, by worker id
    worker_down: dict[str, dict[str, str]] = field(default_factory=dict)
    mode_known: bool = False  # the mode was decided (here at collection, or by the workers)
    dropped: int = 0  # tests a verify run deselected (mutating or patch-only)
    started: float = field(default_factory=time.time)
    _old_handlers: dict[int, Any] = field(default_factory=dict)
    _relay: threading.Thread | None = None  # the controller prints its workers' progress
    _relay_stop: threading.Event = field(default_factory=threading.Event)
    _write_lock: threading.RLock = field(default_factory=threading.RLock)

    def record(self, target: Target) -> VMRecord:
        return self.records.setdefault(target.name, VMRecord(target))

    def cycle(self, target: Target) -> VMCycle:
        if target.name not in self.cycles:
            self.cycles[target.name] = VMCycle(
                self.record(target),
                self.connections,
                self.options,
                self.fleet,
                self.say,
                self.inventory.partners(target),
                self._interrupted,
            )
        return self.cycles[target.name]

    @property
    def mutating_sent(self) -> int:
        """Mutating commands this run sent: here, and by each xdist worker."""
        return self.guard.mutating_sent + sum(self.worker_sent.values())

    def status_of(self, vm: str) -> str:
        """`qm status` of a target VM now (read-only)."""
        return self.cycle(self.inventory.target(vm)).qm().status()

    def say(self, line: str) -> None:
        """A line on the terminal now (progress of a long wait), from any thread; from an xdist
        worker (whose output nobody sees), through the run directory to the controller."""
        if hasattr(self.config, "workerinput") and self.fleet.runstate is not None:
            self.fleet.runstate.tell(line)
            return
        self._print(line)

    def _print(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        # Inside a test pytest captures fd 1, where the reporter writes: lift the capture for the
        # line, as pytest's live logging does (only the main thread runs tests and captures).
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        uncaptured = (
            capman.global_and_fixture_disabled()
            if capman is not None and threading.current_thread() is threading.main_thread()
            else contextlib.nullcontext()
        )
        with self._write_lock, uncaptured:
            reporter.ensure_newline()
            # under xdist the progress dots do not mark the line as begun: look at the writer
            writer = getattr(reporter, "_tw", None)
            if writer is not None and writer.width_of_current_line:
                reporter.write("\n")
            reporter.write_line(f"pvepatch: {line}")

    # --- collection ------------------------------------------------------------------------
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "target" not in metafunc.fixturenames:
            return
        targets = list(self.inventory.targets)
        if metafunc.definition.get_closest_marker("pihole"):
            targets = [t for t in targets if t.pihole is not None]
        # One xdist group per VM (with --dist loadgroup): a VM's stages run on one worker, in order.
        params = [
            pytest.param(t, id=t.name, marks=pytest.mark.xdist_group(t.name)) for t in targets
        ]
        metafunc.parametrize("target", params)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        """After pytest's -m/-k/--deselect: decide the mode once, keep what it allows, order
        the rest VM by VM and stage by stage."""
        items[:] = [i for i in items if not _unbound(i)]
        self.mode = decide_mode(config.getoption("markexpr") or "", items)
        self.mode_known = True
        self.guard.allow_mutating = self.mode == PATCH
        keep = items if self.mode == PATCH else [i for i in items if belongs_to_verify(i)]
        dropped = [i for i in items if i not in keep]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            self.dropped = len(dropped)
        vm_order = {t.name: n for n, t in enumerate(self.inventory.targets)}
        position = {id(item): n for n, item in enumerate(keep)}

        def key(item: pytest.Item) -> tuple[int, int, int]:
            target, stage = target_of(item), stage_of(item)
            return (
                vm_order.get(target.name, -1) if target else -1,
                stage.order if stage else 0,
                position[id(item)],
            )

        items[:] = sorted(keep, key=key)
        last_of_stage: dict[tuple[str, str], str] = {}
        for item in items:
            target, stage = target_of(item), stage_of(item)
            if target is not None:
                self.last_item[target.name] = item.nodeid
                last_of_stage[(target.name, stage.name if stage else "")] = item.nodeid
        self.stage_last = set(last_of_stage.values())
        if self.mode == PATCH and self.fleet.runstate is not None and self.options.canary:
            changing = {
                t.name
                for i in items
                if (t := target_of(i)) is not None and (st := stage_of(i)) and st.mutating
            }
            ordered = [t.name for t in self.inventory.targets if t.name in changing]
            self.fleet.runstate.canaries = tuple(ordered[: self.options.canary])

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        lines = [
            f"pvepatch: inventory {self.inventory.path}, {len(self.inventory.targets)} target "
            "VM(s): " + ", ".join(str(t) for t in self.inventory.targets),
        ]
        lines += [f"pvepatch: WARNING: {w}" for w in self.inventory.warnings]
        return lines

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._say_mode()
        if self.dropped:
            self.say(
                f"{self.dropped} patch-only test(s) deselected; nothing will be changed "
                "(select the patch cycle with -m patch)"
            )

    def _say_mode(self) -> None:
        if self.mode == PATCH:
            self.say("mode PATCH (mutating stages selected with -m)")
        else:
            self.say("mode VERIFY (read-only: mutating commands are refused)")

    # --- running: per-VM gating --------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        target, stage = target_of(item), stage_of(item)
        if target is None or stage is None:
            return
        record = self.record(target)
        failure = record.failure
        if stage.after_failure and self.mode == PATCH:
            return  # its action decides whether it has something to do (cycle.rollback)
        if failure is not None and stage.order > failure.order:
            pytest.skip(f"earlier stage failed: {failure}")
        if record.not_started:
            pytest.skip(record.not_started)
        if self.mode != PATCH or not stage.mutating or self.fleet.runstate is None:
            return
        if _ACTION_OF_STAGE.get(stage.name) in record.outcomes:
            return  # its action ran: the rest of its checks run too
        began = any(key in record.outcomes for key in _ACTION_OF_STAGE.values())
        why = self.fleet.stop_reason()
        if why is None and not began:
            why = self.fleet.runstate.canary_gate(target.name, self.say)
        if why:
            record.not_started = f"{'not restarted' if began else 'not started'}: {why}"
            pytest.skip(record.not_started)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
        report = yield
        target, stage = target_of(item), stage_of(item)
        if target is None:
            return report
        runstate = self.fleet.runstate
        if stage is not None and report.failed:
            reason = one_line(call.excinfo.value) if call.excinfo else "failed"
            name = getattr(item, "originalname", item.name)
            health = item.get_closest_marker("update_check") is not None
            self.record(target).fail(stage.name, stage.order, name, reason, health)
            if runstate is not None and self.mode == PATCH:
                runstate.vm_failed(target.name)
        if call.when == "teardown":
            report.user_properties += [("vm", target.name), ("stage", stage.name if stage else "")]
            if self.last_item.get(target.name) == item.nodeid:
                record = self.record(target)
                record.completed = True
                report.user_properties += junit_properties(record)
                if runstate is not None and self.mode == PATCH:
                    result, _ = verdict(record, self.fleet.down.get(target.name))
                    runstate.vm_done(target.name, result == "passed")
        self._attach(report, item, target, stage.name if stage else "")
        return report

    # --- the end of the run --------------------------------------------------------------------
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._stop_relay()
        runstate = self.fleet.runstate
        if runstate is not None:
            # a VM that did not come back holds its slots until the RUN ends, not this worker
            runstate.done_working(bool(self.fleet.held), self.say)
        self.fleet.release_all()
        self.connections.close_all()
        self._hand_over()  # a worker's final state, for its controller
        self._restore_handlers()

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.fleet.runstate is not None:
            self.fleet.runstate.remove()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        if self.config.option.collectonly:
            return

        def line(text: str, **markup: bool) -> None:
            tr.write_line(redact_text(self.config, text), **markup)

        tr.section("pvepatch")
        runstate = self.fleet.runstate
        if runstate is not None and runstate.interrupted():
            line(
                f"INTERRUPTED ({runstate.interrupted()}): no new action started after it; "
                "restarts under way were finished",
                red=True,
                bold=True,
            )
        line(f"mode: {self.mode}; mutating commands sent: {self.mutating_sent}")
        for target in self.inventory.targets:
            record = self.records.get(target.name)
            result, reason = verdict(record, self.fleet.down.get(target.name))
            shown = "ok" if result == "passed" else result.upper()
            line(f"  {target}: {shown}" + (f" ({reason})" if reason else ""))
            for refusal in record.refusals if record else []:
                line(f"    refused {refusal}", yellow=True)
            for note in record.notes if record else []:
                line(f"    note: {note}")
            if record and record.snapshots:
                shown = ", ".join(f"{n} ({human_age(age)} old)" for n, age in record.snapshots)
                line(f"    pvepatch snapshots: {shown}")
        for target in self.inventory.targets:
            record = self.records.get(target.name)
            rollback = record.rollback if record else None
            if rollback is not None and rollback.rolled_back and "healthy" not in rollback.times:
                line(
                    f"!!! VM {target.name} was rolled back to {rollback.snapshot} but did not come "
                    f"back healthy ({rollback.reason('start', 'ssh_back', 'port_back', 'agent_back', 'dns_back')}); "
                    "check it",
                    red=True,
                    bold=True,
                )
                continue
            if rollback is not None and "healthy" in rollback.times:
                continue  # its rollback brought it back healthy
            restart = record.restart if record else None
            if (
                restart is not None
                and "shutdown_sent" in restart.times
                and "healthy" not in restart.times
                and target.name not in self.fleet.down
                and restart.stopped
            ):
                line(
                    f"!!! VM {target.name} did not come back healthy after its restart "
                    f"({restart.reason('ssh_back', 'port_back', 'agent_back', 'dns_back')}); it "
                    "counted as down until the run ended: check it",
                    red=True,
                    bold=True,
                )
        for name, why in self.fleet.down.items():
            vmid = self.inventory.target(name).vmid
            todo = "" if "ha-manager" in why else f". Start it: qm start {vmid}"  # HA: as it says
            line(f"!!! VM {name} IS NOT RUNNING: {why}{todo}", red=True, bold=True)


RUN_KEY = pytest.StashKey[PvepatchPlugin]()
# the action each mutating stage runs once per VM (VMRecord.once keys)
_ACTION_OF_STAGE = {
    "guest_agent": "agent",
    "snapshot": "snapshot",
    "patch": "apt",
    "restart": "restart",
    "rollback": "rollback",
}


def target_of(item: pytest.Item) -> Target | None:
    callspec = getattr(item, "callspec", None)
    target = callspec.params.get("target") if callspec else None
    return target if isinstance(target, Target) else None


def _unbound(item: pytest.Item) -> bool:
    """A per-VM test with no VM to run on (e.g. Pi-hole checks when there is no Pi-hole)."""
    return "target" in getattr(item, "fixturenames", ()) and target_of(item) is None
