"""The audit facts of a run, as plain data: the one source the ledger and the HTML report show."""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import os
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pvepatch
from pvepatch.audit.ledger import iso
from pvepatch.cycle.record import VMRecord, down_window, verdict
from pvepatch.transport.command import CommandResult, tail

STAGE_NAMES = (
    "preflight", "guest_agent", "snapshot", "patch", "restart", "verify", "rollback",
)  # fmt: skip
TAIL_LINES = 5
TAIL_CHARS = 600
RESTART_EVENTS = (
    ("shutdown_sent", "shutdown sent"),
    ("stopped", "VM stopped"),
    ("start_sent", "start sent"),
    ("started", "VM started"),
    ("ssh_back", "SSH answered (new boot_id)"),
    ("port_back", "virtio port back"),
    ("agent_back", "guest agent answered"),
)


@dataclass
class TestResult:
    name: str
    outcome: str  # passed, failed, skipped, error
    duration: float
    message: str = ""


@dataclass
class StageResult:
    """The tests of one stage for one VM, as they ran."""

    stage: str
    started: float | None = None
    ended: float | None = None
    tests: list[TestResult] = field(default_factory=list)

    @property
    def status(self) -> str:
        outcomes = {t.outcome for t in self.tests}
        if outcomes & {"failed", "error"}:
            return "failed"
        if "passed" in outcomes:
            return "passed"
        return "skipped" if outcomes else "not run"

    @property
    def duration(self) -> float:
        return sum(t.duration for t in self.tests)

    def reason(self) -> str:
        bad = [t for t in self.tests if t.outcome in {"failed", "error"}]
        skipped = [t for t in self.tests if t.outcome == "skipped"]
        first = (bad or skipped)[:1]
        return f"{first[0].name}: {first[0].message}" if first else ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "status": self.status,
            "started": iso(self.started),
            "ended": iso(self.ended),
            "duration_s": round(self.duration, 3),
            "tests": [dataclasses.asdict(t) for t in self.tests],
        }


def command_facts(
    result: CommandResult, redact: Callable[[str], str] = lambda text: text
) -> dict[str, Any]:
    """One command as the record keeps it: host, command, exit code, when, how long, output tail.
    The output is redacted whole before its tail is cut, so a cut cannot split a secret."""
    out = tail(redact(result.stdout), TAIL_LINES)
    err = tail(redact(result.stderr), TAIL_LINES)
    facts = {
        "host": result.host,
        "command": redact(result.command),
        "rc": result.rc,
        "started": iso(result.started),
        "duration_s": round(result.duration, 3),
        "mutating": result.mutating,
        "stdout_tail": out[-TAIL_CHARS:],
        "stderr_tail": err[-TAIL_CHARS:],
        "output_lines": len(result.stdout.splitlines()) + len(result.stderr.splitlines()),
    }
    if result.batch:  # sent in one round trip with the other commands of the same batch id
        facts["batch"] = result.batch
    return facts


def vm_facts(record: VMRecord) -> dict[str, Any]:
    """What the actions recorded about one VM (commands apart): the one serializer behind the
    HTML report, the ledger and the JUnit properties."""
    target, apt, restart = record.target, record.apt, record.restart
    before = restart.before if restart else None
    after = restart.after if restart else None
    result, reason = verdict(record)
    return {
        "vm": target.name,
        "vmid": target.vmid,
        "proxmox_host": target.proxmox.name,
        "failed": str(record.failure) if record.failure else None,
        "packages": [dataclasses.asdict(c) | {"kind": c.kind} for c in apt.changes]
        if apt
        else None,
        "reboot_required": apt.reboot_required if apt else None,
        "reboot_packages": list(apt.reboot_packages) if apt else None,
        "apt_lock_waits": apt.lock_waits if apt else None,
        "kernel_before": before.kernel if before else None,
        "kernel_after": after.kernel if after else None,
        "boot_id_before": before.boot_id if before else None,
        "boot_id_after": after.boot_id if after else None,
        "boot_id_before_patch": apt.boot_id_before if apt else None,
        "boot_id_after_patch": apt.boot_id_after if apt else None,
        "qemu_pid_before": before.qemu_pid if before else None,
        "qemu_pid_after": after.qemu_pid if after else None,
        "qemu_node_before": before.node if before else None,
        "qemu_node_after": after.node if after else None,
        "hostname": record.binding.ssh_hostname if record.binding else None,
        "binding": dataclasses.asdict(record.binding) if record.binding else None,
        "cluster": dataclasses.asdict(record.cluster) if record.cluster else None,
        "proofs": [dataclasses.asdict(p) for p in record.proofs],
        "refusals": list(record.refusals),
        "notes": list(record.notes),
        "agent": dataclasses.asdict(record.agent) if record.agent else None,
        "restart": _restart_facts(restart) if restart else None,
        **_snapshot_facts(record),
        "record_verdict": result,
        "record_reason": reason,
    }


def junit_properties(record: VMRecord) -> list[tuple[str, str]]:
    """The VM's facts as JUnit properties: vm_facts flattened (the same serializer as the HTML
    report and the ledger), scalars as they are, packages as `name old -> new`."""
    facts = vm_facts(record)
    props = [("verdict", facts["record_verdict"]), ("reason", facts["record_reason"])]
    for key in (
        "vmid", "proxmox_host", "kernel_before", "kernel_after", "boot_id_before",
        "boot_id_after", "qemu_pid_before", "qemu_pid_after", "qemu_node_before",
        "qemu_node_after", "reboot_required",
    ):  # fmt: skip
        if facts.get(key) is not None:
            props.append((key, str(facts[key])))
    for change in facts.get("packages") or []:
        props.append(("package", f"{change['name']} {change['old']} -> {change['new']}"))
    for proof in facts["proofs"]:
        props.append(("proof", f"{proof['action']}: {proof['binding']}"))
    props += [("refused", refusal) for refusal in facts["refusals"]]
    return props


def _restart_facts(restart: Any) -> dict[str, Any]:
    times = restart.times
    t0 = times.get("shutdown_sent")
    return {
        "method": restart.method,
        "refused": restart.refused,
        "pending_applied": list(restart.pending_applied),
        "errors": dict(restart.errors),
        "events": [
            {
                "event": key,
                "label": label,
                "time": iso(times.get(key)),
                "after_s": round(times[key] - t0, 1) if key in times and t0 else None,
            }
            for key, label in RESTART_EVENTS
        ],
        "downtime_s": round(restart.downtime, 1) if restart.downtime is not None else None,
        "down": _down_facts(restart),
        "shutdown_rc": restart.shutdown.rc if restart.shutdown else None,
        "hard_stop_rc": restart.hard_stop.rc if restart.hard_stop else None,
        "start_rc": restart.start.rc if restart.start else None,
    }


def _snapshot_facts(record: VMRecord) -> dict[str, Any]:
    """The snapshot before the update, the rollback to it, the pruning, the ones seen."""
    snap, rollback, pruned = record.snapshot, record.rollback, record.pruned
    facts: dict[str, Any] = {
        "snapshot": None
        if snap is None
        else {
            "name": snap.name,
            "description": snap.description,
            "skipped": snap.skipped,
            "taken": snap.taken,
            "error": snap.error,
            "seconds": snap.seconds,
        },
        "rollback": None,
        "snapshots_pruned": None
        if pruned is None
        else {
            "skipped": pruned.skipped,
            "kept": pruned.kept,
            "deleted": pruned.deleted,
            "errors": pruned.errors,
        },
        "snapshots_seen": [{"name": n, "age_s": a} for n, a in record.snapshots],
    }
    if rollback is not None:
        restart_like = _restart_facts(rollback)
        for event in restart_like["events"]:  # its way down is `qm rollback`, not a shutdown
            if event["event"] == "shutdown_sent":
                event["label"] = "qm rollback sent"
        facts["rollback"] = restart_like | {
            "snapshot": rollback.snapshot,
            "why": rollback.why,
            "skipped": rollback.skipped,
            "rolled_back": rollback.rolled_back,
            "healthy": "healthy" in rollback.times,
            "rollback_rc": rollback.rollback.rc if rollback.rollback else None,
            "rollback_seconds": rollback.seconds,
            "packages_before": rollback.packages_before,
        }
    return facts


def _down_facts(restart: Any) -> dict[str, Any] | None:
    """When the VM was down (cycle.record.down_window): what the report's timeline draws."""
    window = down_window(restart)
    if window is None:
        return None
    start, end = window
    return {"from": iso(start), "to": iso(end), "from_ts": round(start, 3),
            "to_ts": round(end, 3), "seconds": round(end - start, 1)}  # fmt: skip


def vm_verdict(
    record: VMRecord | None, stages: dict[str, StageResult], left_down: str | None = None
) -> tuple[str, str]:
    """passed / failed / interrupted / not run / left down, and the one-line reason: the
    terminal summary's (cycle.record.verdict)."""
    if record is None and not stages and not left_down:
        return "not run", ""
    return verdict(record, left_down)


# --- the run header ------------------------------------------------------------------------


def operator() -> str:
    """user@machine (and the sudo user behind root, when there is one)."""
    user = getpass.getuser()
    sudo = os.environ.get("SUDO_USER")
    who = f"{user}@{socket.getfqdn()}"
    return f"{who} (sudo by {sudo})" if sudo and sudo != user else who


def version() -> str:
    """pvepatch's version, with the git commit (and `-dirty`) when pvepatch itself is a checkout
    (not the directory pytest runs in, which may be the operator's own repository)."""
    root = Path(pvepatch.__file__).resolve().parent
    try:
        commit = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return pvepatch.__version__
    return f"{pvepatch.__version__} (git {commit[:12]}{'-dirty' if dirty else ''})"


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return proc.stdout.strip()


def sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
