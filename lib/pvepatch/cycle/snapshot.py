"""Snapshots: the one each VM gets before its update, and pruning pvepatch's older ones.

Only snapshots pvepatch made are ever deleted: their name is `pvepatch_<UTC time>` and their
description begins with `pvepatch:`. The rollback to a snapshot is pvepatch.cycle.rollback.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from pvepatch.cycle.options import Fleet, Options
from pvepatch.cycle.record import PruneOutcome, SnapshotOutcome, VMRecord
from pvepatch.errors import PvepatchError, SafetyRefusal, last_line, one_line
from pvepatch.inventory import Target
from pvepatch.proxmox.parse import SnapshotEntry
from pvepatch.proxmox.preconditions import Proof
from pvepatch.proxmox.qm import Qm

PREFIX = "pvepatch_"
OWN_NAME = re.compile(r"pvepatch_(\d{8}_\d{6})(?:_\d+)?")
DESCRIPTION_MARK = "pvepatch:"


@dataclass(frozen=True)
class SnapshotPolicy:
    """What one VM gets: the inventory's host or group variables, else the command line."""

    enabled: bool
    rollback: bool
    keep: int

    @classmethod
    def of(cls, target: Target, options: Options) -> SnapshotPolicy:
        inv = target.snapshot
        return cls(
            enabled=options.snapshot if inv.snapshot is None else inv.snapshot,
            rollback=(
                options.rollback_on_failure
                if inv.rollback_on_failure is None
                else inv.rollback_on_failure
            ),
            keep=options.snapshot_keep if inv.keep is None else inv.keep,
        )


def snapshot_name(started: float, taken: Iterable[str]) -> str:
    """`pvepatch_<YYYYmmdd_HHMMSS>` of the run's start (UTC), made unique on the VM."""
    base = PREFIX + time.strftime("%Y%m%d_%H%M%S", time.gmtime(started))
    names, n = set(taken), 2
    name = base
    while name in names:
        name, n = f"{base}_{n}", n + 1
    return name


def own(entries: Iterable[SnapshotEntry]) -> list[SnapshotEntry]:
    """pvepatch's own snapshots, oldest first (their names carry their time)."""
    mine = [
        e
        for e in entries
        if OWN_NAME.fullmatch(e.name) and e.description.startswith(DESCRIPTION_MARK)
    ]
    return sorted(mine, key=lambda e: (OWN_NAME.fullmatch(e.name).group(1), e.name))  # type: ignore[union-attr]


def age_of(name: str, now: float | None = None) -> float | None:
    """Seconds since a pvepatch snapshot was taken (from its name), None for another name."""
    match = OWN_NAME.fullmatch(name)
    if not match:
        return None
    taken = calendar.timegm(time.strptime(match.group(1), "%Y%m%d_%H%M%S"))
    return (time.time() if now is None else now) - taken


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "age unknown"
    if seconds < 120:
        return f"{max(0, int(seconds))} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


class Cycle(Protocol):
    """What the snapshot actions need of the VM's cycle (pvepatch.cycle.actions.VMCycle)."""

    record: VMRecord
    target: Target
    options: Options
    fleet: Fleet
    progress: Callable[[str], None]

    def qm(self) -> Qm: ...

    def prove_running(self, action: str) -> Proof: ...


class Snapshots:
    """One VM's snapshot before its update, and the pruning after a good one."""

    def __init__(self, cycle: Cycle, started: float):
        self.cycle = cycle
        self.target = cycle.target
        self.policy = SnapshotPolicy.of(cycle.target, cycle.options)
        self.started = started  # the run's start: every VM's snapshot of this run has its time
        self.proof: Proof | None = None  # the VM proven right before its snapshot

    def take(self) -> SnapshotOutcome:
        """`qm snapshot` on a fresh proof; raises SafetyRefusal when the proof fails (the
        outcome records a failed snapshot: the update must not go on without it)."""
        outcome = SnapshotOutcome()
        if not self.policy.enabled:
            outcome.skipped = "no snapshot requested (--snapshot or pvepatch_snapshot)"
            return outcome
        qm = self.cycle.qm()
        outcome.name = snapshot_name(self.started, (s.name for s in qm.snapshots()))
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.started))
        outcome.description = (
            f"{DESCRIPTION_MARK} before patching {self.target.name} (run started {when} UTC)"
        )
        self.proof = self.cycle.prove_running("qm snapshot")
        self.cycle.progress(f"qm snapshot {self.target.vmid} {outcome.name}")
        began = time.monotonic()
        outcome.result = qm.snapshot(self.proof, outcome.name, outcome.description)
        outcome.seconds = round(time.monotonic() - began, 1)
        if not outcome.result.ok:
            outcome.error = (
                f"qm snapshot failed (exit {outcome.result.rc}): "
                f"{last_line(outcome.result.stderr) or last_line(outcome.result.stdout)}"
            )
            return outcome
        listed = [s.name for s in qm.snapshots()]
        if outcome.name not in listed:
            outcome.error = f"qm snapshot exited 0 but lists no snapshot {outcome.name}"
            return outcome
        outcome.taken = True
        return outcome

    def prune(self, record: VMRecord) -> PruneOutcome:
        """After the VM passed its checks: delete pvepatch's snapshots beyond the newest
        `keep` (this run's included), each on a fresh proof. Never another snapshot."""
        outcome = PruneOutcome()
        restart = record.restart
        snap = record.snapshot
        if not self.policy.enabled or snap is None or not snap.taken:
            outcome.skipped = "no snapshot taken by this run: nothing to prune"
        elif record.failure is not None:
            outcome.skipped = "the VM failed: every snapshot is kept"
        elif record.not_started or self.cycle.fleet.stop_reason():
            why = record.not_started or self.cycle.fleet.stop_reason()
            outcome.skipped = f"the run is stopping ({why}): every snapshot is kept"
        elif restart is None or not (
            "healthy" in restart.times or (restart.skipped or "").startswith("--reboot")
        ):
            outcome.skipped = (
                "the VM was not seen healthy after its restart: every snapshot is kept"
            )
        if outcome.skipped:
            return outcome
        qm = self.cycle.qm()
        mine = [e.name for e in own(qm.snapshots())]
        keep = mine[-self.policy.keep :]
        outcome.kept = keep
        for name in mine[: -self.policy.keep]:
            try:
                proof = self.cycle.prove_running("qm delsnapshot")
            except SafetyRefusal as exc:
                outcome.errors[name] = f"not deleted: {exc.reason}"
                continue
            result = qm.delsnapshot(proof, name)
            if result.ok:
                outcome.deleted.append(name)
            else:
                outcome.errors[name] = f"qm delsnapshot failed (exit {result.rc}): " + (
                    last_line(result.stderr) or "(no error text)"
                )
        return outcome

    def listed(self, record: VMRecord, max_age: float) -> list[tuple[str, float | None]]:
        """pvepatch's snapshots of this VM with their ages; a note for each one older than
        `max_age` (forgotten snapshots fill the storage). Read-only."""
        try:
            mine = own(self.cycle.qm().snapshots())
        except PvepatchError as exc:
            raise PvepatchError(f"cannot list the snapshots: {one_line(exc)}") from exc
        seen = [(e.name, age_of(e.name)) for e in mine]
        for name, age in seen:
            if age is not None and age > max_age:
                note = (
                    f"WARNING: snapshot {name} is {human_age(age)} old (over "
                    f"{human_age(max_age)}): delete it once the update is known good: "
                    f"qm delsnapshot {self.target.vmid} {name}"
                )
                if note not in record.notes:
                    record.notes.append(note)
        return seen
