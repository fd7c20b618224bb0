"""The one pvepatch plugin object per run: its state, and the hooks that order, gate and sum up."""

from __future__ import annotations

import signal
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
from pvepatch.errors import one_line
from pvepatch.inventory import Inventory, Target
from pvepatch.plugin.mode import PATCH, VERIFY, belongs_to_verify, decide_mode, stage_of
from pvepatch.transport.command import ReadOnlyGuard
from pvepatch.transport.connections import Connections

PLUGIN_NAME = "pvepatch-run"


@dataclass
class PvepatchPlugin:
    """State and hooks of one pvepatch run, registered by pytest_configure (like pytest's
    StepwisePlugin). The mode is decided once, after pytest's own deselection."""

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
    dropped: int = 0  # tests a verify run deselected (mutating or patch-only)
    started: float = field(default_factory=time.time)
    _old_handlers: dict[int, Any] = field(default_factory=dict)
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

    def _interrupted(self) -> str | None:
        """Why following a detached apt stops (the run was interrupted), or None."""
        runstate = self.fleet.runstate
        why = runstate.interrupted() if runstate else None
        return f"run interrupted ({why})" if why else None

    def status_of(self, vm: str) -> str:
        """`qm status` of a target VM now (read-only)."""
        return self.cycle(self.inventory.target(vm)).qm().status()

    def say(self, line: str) -> None:
        """A line on the terminal now (progress of a long wait), from any thread."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        with self._write_lock:
            reporter.ensure_newline()
            reporter.write_line(f"pvepatch: {line}")

    # --- collection ------------------------------------------------------------------------
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "target" not in metafunc.fixturenames:
            return
        targets = list(self.inventory.targets)
        if metafunc.definition.get_closest_marker("pihole"):
            targets = [t for t in targets if t.pihole is not None]
        metafunc.parametrize("target", targets, ids=[t.name for t in targets])

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        """After pytest's -m/-k/--deselect: decide the mode once, keep what it allows, order
        the rest VM by VM and stage by stage."""
        items[:] = [i for i in items if not _unbound(i)]
        self.mode = decide_mode(config.getoption("markexpr") or "", items)
        if self.mode == PATCH and hasattr(config, "workerinput"):
            raise pytest.UsageError(_XDIST_REFUSAL)
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
        for item in items:
            target = target_of(item)
            if target is not None:
                self.last_item[target.name] = item.nodeid
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
        if self.mode == PATCH:
            self.say("mode PATCH (mutating stages selected with -m)")
        else:
            self.say("mode VERIFY (read-only: mutating commands are refused)")
        if self.dropped:
            self.say(
                f"{self.dropped} patch-only test(s) deselected; nothing will be changed "
                "(select the patch cycle with -m patch)"
            )

    # --- running: per-VM gating --------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        target, stage = target_of(item), stage_of(item)
        if target is None or stage is None:
            return
        record = self.record(target)
        failure = record.failure
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
            self.record(target).fail(stage.name, stage.order, name, reason)
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
        return report

    # --- the end of the run --------------------------------------------------------------------
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Ctrl-C and SIGTERM stop new actions and never cut one short (issue: nothing
        stranded): the handler records the interrupt for every worker and says what is in
        flight; a restart under way runs to its end. Without a run state: raise, as pytest."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        runstate = self.fleet.runstate
        if runstate is None or self.mode != PATCH:
            raise KeyboardInterrupt(f"pvepatch: received {name}")
        first = runstate.interrupt(name)
        down = runstate.down_now()
        if first:
            self.say(
                f"{name} received: no new action starts; a restart under way is finished "
                "(shutdown to its timeout, start, checks)"
            )
        else:
            self.say(f"{name} received again: still bringing back what is down")
        self.say("down now: " + ("; ".join(down) if down else "none"))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.fleet.release_all()
        self.connections.close_all()
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()
        runstate = self.fleet.runstate
        if (
            runstate is not None
            and runstate.interrupted()
            and not hasattr(self.config, "workerinput")
        ):
            session.exitstatus = pytest.ExitCode.INTERRUPTED

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
        line(f"mode: {self.mode}; mutating commands sent: {self.guard.mutating_sent}")
        for target in self.inventory.targets:
            record = self.records.get(target.name)
            result, reason = verdict(record, self.fleet.down.get(target.name))
            shown = "ok" if result == "passed" else result.upper()
            line(f"  {target}: {shown}" + (f" ({reason})" if reason else ""))
            for refusal in record.refusals if record else []:
                line(f"    refused {refusal}", yellow=True)
            for note in record.notes if record else []:
                line(f"    note: {note}")
        for name, why in self.fleet.down.items():
            line(
                f"!!! VM {name} IS NOT RUNNING: {why}. Start it: qm start "
                f"{self.inventory.target(name).vmid}",
                red=True,
                bold=True,
            )


RUN_KEY = pytest.StashKey[PvepatchPlugin]()
# the action each mutating stage runs once per VM (VMRecord.once keys)
_ACTION_OF_STAGE = {"guest_agent": "agent", "patch": "apt", "restart": "restart"}

_XDIST_REFUSAL = (
    "pvepatch: a patch run under pytest-xdist (-n) is refused: parallel workers would take "
    "several VMs down at once. Run `pytest -m patch` without -n (a verify run may use -n). "
    "Nothing was touched."
)


def refuse_parallel_patch(config: pytest.Config, markexpr_names_patch: bool) -> None:
    """Before anything is touched: no patch run under xdist workers (until the fleet budget)."""
    if not markexpr_names_patch:
        return
    workers = config.getoption("numprocesses", None)  # None when xdist is not loaded at all
    if (
        workers not in (None, 0, "0")
        or config.getoption("tx", None)
        or config.getoption("dist", "no") != "no"
        or hasattr(config, "workerinput")
    ):
        raise pytest.UsageError(_XDIST_REFUSAL)


def target_of(item: pytest.Item) -> Target | None:
    callspec = getattr(item, "callspec", None)
    target = callspec.params.get("target") if callspec else None
    return target if isinstance(target, Target) else None


def _unbound(item: pytest.Item) -> bool:
    """A per-VM test with no VM to run on (e.g. Pi-hole checks when there is no Pi-hole)."""
    return "target" in getattr(item, "fixturenames", ()) and target_of(item) is None
