"""One run's audit state: stage results as they happen, the ledger records, transcripts, the data
the HTML report is rendered from."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any, Protocol

import pytest

from pvepatch.audit.html import write_index, write_transcript
from pvepatch.audit.ledger import Ledger, iso
from pvepatch.audit.redact import Redactor
from pvepatch.audit.summary import (
    StageResult,
    TestResult,
    command_facts,
    operator,
    sha256,
    version,
    vm_facts,
    vm_verdict,
)
from pvepatch.cycle.options import Fleet, Options
from pvepatch.cycle.record import VMRecord
from pvepatch.inventory import Inventory
from pvepatch.transport.command import CommandResult

TRANSCRIPT_LINES = 20  # a guest command with more output than this gets its own file
INTERRUPTED = 2  # pytest.ExitCode.INTERRUPTED


class Run(Protocol):
    """What the audit reads of the run (pvepatch.plugin.core.PvepatchPlugin has it)."""

    inventory: Inventory
    options: Options
    fleet: Fleet  # its `down`: the VMs the run left not running (merged from every worker)
    records: dict[str, VMRecord]  # one per VM (on an xdist controller, as its worker shipped it)
    mode: str
    started: float

    @property
    def mutating_sent(self) -> int: ...  # summed over xdist workers

    def status_of(self, vm: str) -> str: ...


class AuditLog:
    def __init__(
        self,
        config: pytest.Config,
        run: Run,
        ledger_path: Path,
        html_path: Path | None,
        redactor: Redactor,
    ):
        self.config, self.run, self.redactor = config, run, redactor
        self.html_path = html_path.resolve() if html_path else None
        self.run_id = ledger_path.stem
        self.files_dir = ledger_path.parent / f"{ledger_path.stem}.files"
        self.ledger = Ledger(ledger_path, self.run_id, redactor.obj)
        self.stages: dict[str, dict[str, StageResult]] = {}
        self.keys: dict[str, tuple[str, str]] = {}
        self.phases: dict[str, TestResult] = {}
        self.open: dict[str, str] = {}  # VM -> its stage under way (one per xdist worker at most)
        self.collected = 0  # tests to run, on an xdist controller (known from the workers)
        self.logging = False  # run_start written
        self.sent: dict[str, tuple[int, int]] = {}
        self.transcribed: dict[str, int] = {}
        self.links: dict[tuple[str, int], str] = {}
        self.transcripts: dict[str, dict[str, str]] = {}
        self.facts: dict[tuple[str, str, int], dict[str, Any]] = {}  # redacted once per command
        self.ended: float | None = None
        self.exitstatus: int | None = None
        self.interruptions: dict[str, dict[str, Any]] = {}  # VM -> where the interruption found it

    # --- the header ------------------------------------------------------------------------
    def static_header(self) -> dict[str, Any]:
        opts, inv, config = self.run.options, self.run.inventory, self.config
        return {
            "run id": self.run_id,
            "operator": operator(),
            "pvepatch version": version(),
            "inventory": str(Path(inv.path).resolve()),
            "inventory sha256": sha256(Path(inv.path)),
            "group": config.getoption("group"),
            "--limit": config.getoption("limit") or "(all)",
            "restart method": opts.restart_method,
            "hard-stop fallback": opts.hard_stop_fallback,
            "skiplock": opts.skiplock,
            "timeouts (shutdown / boot / ssh / apt lock)": f"{opts.shutdown_timeout} / "
            f"{opts.boot_timeout:g} / {config.getoption('ssh_timeout'):g} / {opts.lock_timeout} s",
            "restart pause": f"{opts.restart_pause:g} s",
            "host keys": "accept new" if config.getoption("accept_new_host_keys") else "strict",
            "extra known_hosts": ", ".join(config.getoption("known_hosts")) or "—",
        }

    def header(self) -> dict[str, Any]:
        end = self.ended
        return {
            "run id": self.run_id,
            "mode": self.run.mode,
            "verdict": self.verdict(),
            "started": iso(self.run.started),
            "ended": iso(end),
            "duration": f"{end - self.run.started:.1f} s" if end else "—",
            **{k: v for k, v in self.static_header().items() if k != "run id"},
            "mutating commands sent": self.run.mutating_sent,
            "target VMs": ", ".join(str(t) for t in self.run.inventory.targets),
            "command line": "pytest " + " ".join(self.config.invocation_params.args),
            "exit status": self.exitstatus,
            "ledger": self.ledger.path.name,
            "JUnit XML": Path(self.config.option.xmlpath).name
            if getattr(self.config.option, "xmlpath", None)
            else "—",
            "transcripts": f"{self.files_dir.name}/",
        }

    def verdict(self) -> str:
        if self.exitstatus is None:
            return "running"
        if self.exitstatus == INTERRUPTED:
            return "interrupted"
        vms = [self.vm_entry(t.name)["verdict"] for t in self.run.inventory.targets]
        if self.exitstatus == 0 and "failed" not in vms:
            return "passed"
        return "failed" if self.exitstatus in (0, 1) else f"error (exit status {self.exitstatus})"

    # --- as the run goes ---------------------------------------------------------------------
    def run_start(self, items: int) -> None:
        self.logging = True
        targets = [
            {"vm": t.name, "vmid": t.vmid, "proxmox_host": t.proxmox.name}
            for t in self.run.inventory.targets
        ]
        self.ledger.write(
            "run_start", mode=self.run.mode, limit=self.config.getoption("limit"),
            tests=items, targets=targets, header=self.header(),
        )  # fmt: skip

    def test_starts(self, nodeid: str, key: tuple[str, str], at: float | None = None) -> None:
        """A test of a VM's stage begins; the first one opens the stage."""
        if not self.logging:  # an xdist controller learns the mode from the first report
            self.run_start(self.collected)
        self.keys[nodeid] = key
        vm, stage = key
        if self.open.get(vm) == stage:
            return
        self.stages.setdefault(vm, {})[stage] = StageResult(stage, started=at or time.time())
        self.open[vm] = stage
        self.ledger.write("stage_start", vm=vm, vmid=self._vmid(vm), stage=stage)

    def test_phase(
        self, report: pytest.TestReport, payload: dict[str, Any], message: str
    ) -> dict[str, str]:
        """One phase's report of a VM's test (`payload`: its vm, stage, whether it ends the
        stage). Returns the links to transcripts the test's commands made."""
        key = (payload["vm"], payload["stage"])
        self.test_starts(report.nodeid, key, getattr(report, "start", None))
        name = report.nodeid.split("::")[-1]
        result = self.phases.setdefault(report.nodeid, TestResult(name, "passed", 0.0))
        result.duration += report.duration
        if report.when == "call" or not report.passed:
            outcome: str = report.outcome
            if report.when != "call" and report.failed:
                outcome = "error"
            if result.outcome in ("passed", "skipped") or outcome == "error":
                result.outcome = outcome
            if not report.passed and not result.message:
                result.message = message
        links = self.new_transcripts(key[0]) if report.when == "call" else {}
        if report.when == "teardown":
            self.stages[key[0]][key[1]].tests.append(self.phases.pop(report.nodeid))
            if payload["stage_ends"]:
                self.stage_ends(key)
        return links

    def stage_ends(self, key: tuple[str, str], status: str | None = None) -> None:
        vm, stage = key
        result = self.stages[vm][stage]
        result.ended = time.time()
        self.new_transcripts(vm)
        qm_from, guest_from = self.sent.get(vm, (0, 0))
        record = self.run.records.get(vm)
        fields = result.as_dict()
        if status:
            fields["status"] = status
        self.ledger.write(
            "stage",
            vm=vm,
            vmid=self._vmid(vm),
            **fields,
            verdict=self.vm_entry(vm, commands=False)["verdict"],
            facts=vm_facts(record) if record else None,
            qm_commands=self._commands(vm, "qm", qm_from),
            guest_commands=self._commands(vm, "guest", guest_from),
        )
        if record is not None:
            self.sent[vm] = (len(record.qm_commands), len(record.guest_commands))
        self.open.pop(vm, None)

    def run_end(self, exitstatus: int) -> None:
        self.ended, self.exitstatus = time.time(), exitstatus
        if not self.logging:
            self.run_start(self.collected)
        if exitstatus == INTERRUPTED:
            for key in list(self.open.items()):
                self._close_interrupted(key)
        interruptions = list(self.interruptions.values())
        self.ledger.write(
            "run_end",
            verdict=self.verdict(),
            exit_status=exitstatus,
            ended=iso(self.ended),
            mutating_commands_sent=self.run.mutating_sent,
            vms={
                t.name: {k: v for k, v in self.vm_entry(t.name, False).items() if k in VERDICT}
                for t in self.run.inventory.targets
            },
            interrupted=interruptions[0] if interruptions else None,
            interrupted_vms=interruptions,
            left_down=dict(self.run.fleet.down),
        )

    def _close_interrupted(self, key: tuple[str, str]) -> None:
        vm, stage = key
        for nodeid, result in list(self.phases.items()):
            if self.keys.get(nodeid) == key:
                result.outcome, result.message = "interrupted", "the run was interrupted here"
                self.stages[vm][stage].tests.append(self.phases.pop(nodeid))
        tests = [nodeid for nodeid, k in self.keys.items() if k == key]
        self.interruptions[vm] = {
            "vm": vm,
            "stage": stage,
            "last_test": tests[-1] if tests else None,
            "vm_status_after": self._vm_status(vm),
            "left_down_by_run": self.run.fleet.down.get(vm),
        }
        self.stage_ends(key, status="interrupted")

    def _vm_status(self, vm: str) -> str:
        """`qm status` after the interruption (the cycle starts a stopped VM again first)."""
        try:
            return self.run.status_of(vm)
        except Exception as exc:  # noqa: BLE001 - the state is reported as unknown, with why
            return f"unknown ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"

    # --- transcripts ---------------------------------------------------------------------------
    def new_transcripts(self, vm: str) -> dict[str, str]:
        """Write the VM's long or mutating guest commands to files; the new ones' links."""
        record = self.run.records.get(vm)
        if record is None:
            return {}
        new = {}
        start = self.transcribed.get(vm, 0)
        for index, result in enumerate(record.guest_commands[start:], start):
            lines = len(result.stdout.splitlines()) + len(result.stderr.splitlines())
            if not result.mutating and lines <= TRANSCRIPT_LINES:
                continue
            command = self.redactor(result.command)  # the label and file name show its start
            label = f"{vm}: {_label(command)}"
            name = transcript_name(vm, index, command)
            write_transcript(self.files_dir, name, _transcript(result), self.redactor)
            link = f"{self.files_dir.name}/{name}"
            self.links[(vm, index)] = new[label] = link
        self.transcribed[vm] = len(record.guest_commands)
        self.transcripts.setdefault(vm, {}).update(new)
        return new

    def _commands(self, vm: str, kind: str, start: int = 0) -> list[dict[str, Any]]:
        record = self.run.records.get(vm)
        if record is None:
            return []
        results = record.qm_commands if kind == "qm" else record.guest_commands
        out = []
        for index, result in enumerate(results[start:], start):
            key = (vm, kind, index)
            if key not in self.facts:
                self.facts[key] = command_facts(result, self.redactor)
            facts = dict(self.facts[key])
            if kind == "guest" and (vm, index) in self.links:
                facts["transcript"] = self.links[(vm, index)]
            out.append(facts)
        return out

    # --- the data the report is rendered from ------------------------------------------------
    def vm_entry(self, vm: str, commands: bool = True) -> dict[str, Any]:
        target = self.run.inventory.target(vm)
        record = self.run.records.get(vm)
        stages = self.stages.get(vm, {})
        verdict, reason = vm_verdict(record, stages, self.run.fleet.down.get(vm))
        where = self.interruptions.get(vm)
        if where:
            verdict = "interrupted"
            reason = f"run interrupted in stage {where['stage']}; VM status afterwards: {where['vm_status_after']}"
        entry: dict[str, Any] = {"vm": vm, "vmid": target.vmid, "proxmox_host": target.proxmox.name}
        entry.update(vm_facts(record) if record else {})
        entry.update(verdict=verdict, reason=reason)
        entry["stages"] = {name: result.as_dict() for name, result in stages.items()}
        if commands:
            entry["qm_commands"] = self._commands(vm, "qm")
            entry["guest_commands"] = self._commands(vm, "guest")
            entry["transcripts"] = self.transcripts.get(vm, {})
        return entry

    def data(self) -> dict[str, Any]:
        """The run's facts, redacted: what the HTML shows (the ledger's records hold the same)."""
        vms = [self.vm_entry(t.name) for t in self.run.inventory.targets]
        return dict(self.redactor.obj({"header": self.header(), "vms": vms}))

    def finish_files(self) -> None:
        """After pytest-html and junitxml wrote: redact them, close the ledger, update the index."""
        self.ledger.close()
        xml = getattr(self.config.option, "xmlpath", None)
        if self.html_path is not None and self.html_path.exists():
            self.redactor.file(self.html_path, markup=True)
        if xml and Path(xml).exists():
            self.redactor.file(Path(xml), markup=False)
        write_index(self.ledger.path.parent)

    def _vmid(self, vm: str) -> int:
        return self.run.inventory.target(vm).vmid


VERDICT = ("verdict", "reason", "failed")


def _label(command: str) -> str:
    """A short name for a command: apt-get's verb and arguments (without the note of the systemd
    unit it ran in), else its start."""
    if "apt-get" in command and "--force-confold " in command:
        return "apt-get " + command.rsplit("--force-confold ", 1)[1].split("  # ", 1)[0]
    return command[:50]


def transcript_name(vm: str, index: int, command: str) -> str:
    """The transcript's file name: one path component whatever the VM is called (`../x`
    cannot leave the transcripts directory); a VM name that had to change gets a short hash,
    so two VMs never share a file."""
    host = _slug(vm) or "vm"
    if host != vm:
        host += "-" + hashlib.sha256(vm.encode()).hexdigest()[:8]
    return f"{host}-{index:03d}-{_slug(_label(command))}.txt"


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "-", text).strip("-.")[:60]


def _transcript(result: CommandResult) -> str:
    return (
        f"host: {result.host}\ncommand: {result.command}\nsent: {iso(result.started)}\n"
        f"exit status: {result.rc}\nduration: {result.duration:.1f} s\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}\n"
    )
