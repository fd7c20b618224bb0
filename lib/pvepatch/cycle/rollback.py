"""The rollback of a VM whose checks failed after its update: back to the snapshot this run took.

A rollback is a restart whose way down is `qm rollback` (PVE hard-stops a running VM, rolls its
disks back and leaves it stopped): the same down slots, the same `qm start` on a proof that this
run stopped it, the same checks after the boot (pvepatch.cycle.restart.Restart).
"""

from __future__ import annotations

import time

from pvepatch.cycle.record import Identity, RollbackOutcome, VMRecord
from pvepatch.cycle.restart import Cycle, Restart, _why
from pvepatch.cycle.slots import Slot
from pvepatch.cycle.snapshot import SnapshotPolicy
from pvepatch.cycle.wait import ticking
from pvepatch.errors import PvepatchError, SafetyRefusal
from pvepatch.proxmox.preconditions import Proof, prove_holds_our_snapshot
from pvepatch.proxmox.qm import SNAPSHOT_TIMEOUT


def rollback_command(vmid: int, snapshot: str) -> str:
    return f"qm rollback {vmid} {snapshot} --start 1"


def why_not(record: VMRecord, policy: SnapshotPolicy) -> str | None:
    """Why this VM is not rolled back (None: it is). A VM that failed after its update and is
    not rolled back gets a note naming its snapshot and the command that rolls it back."""
    failure, snap = record.failure, record.snapshot
    if failure is None:
        return "nothing to roll back: its checks passed"
    if snap is None or not snap.taken or snap.name is None:
        return "no snapshot of this run to roll back to"
    if not record.update_began:
        return "its update never began: nothing to roll back"
    by_hand = rollback_command(record.target.vmid, snap.name)
    if not failure.update_check:  # a refusal, a failed shutdown or start, a check's own error
        why = f"its failure is not a health check after the update ({failure.test})"
    elif not policy.rollback:
        why = "no --rollback-on-failure"
    else:
        return None
    note = (
        f"snapshot {snap.name} kept; not rolled back ({why}); to roll back on "
        f"{record.target.proxmox.name}: {by_hand}"
    )
    if note not in record.notes:
        record.notes.append(note)
    return f"not rolled back: {why}"


class Rollback(Restart):
    """`qm rollback` to this run's snapshot, `qm start`, and the VM seen healthy again."""

    def __init__(self, cycle: Cycle, record: VMRecord, policy: SnapshotPolicy, proof: Proof | None):
        snap = record.snapshot
        self.record = record
        self.policy = policy
        self.snapshot = snap.name if snap and snap.name else ""
        self.snapshot_proof = proof  # the VM proven right before its snapshot
        self.reused = False  # the slots the VM held since it came back unhealthy
        outcome = RollbackOutcome(
            method="rollback",
            snapshot=self.snapshot or None,
            why=str(record.failure) if record.failure else None,
        )
        if record.apt is not None:
            outcome.packages_before = {c.name: c.old for c in record.apt.changes}
        super().__init__(cycle, outcome)
        self.outcome: RollbackOutcome = outcome

    def run(self) -> RollbackOutcome:
        outcome = self.outcome
        skip = why_not(self.record, self.policy)
        if skip is None and self.snapshot_proof is None:
            skip = "not rolled back: the proof made before its snapshot is gone (another process)"
        runstate = self.fleet.runstate
        interrupted = runstate.interrupted() if runstate is not None else None
        if skip is None and interrupted:  # a --max-fail halt does not stop its own cure
            why = f"run interrupted ({interrupted})"
            note = (
                f"snapshot {self.snapshot} kept; not rolled back ({why}); to roll back: "
                f"{rollback_command(self.target.vmid, self.snapshot)}"
            )
            self.record.notes.append(note)
            skip = f"not rolled back: {why}"
        if skip:
            outcome.skipped = skip
            return outcome
        self.cycle.progress(f"rolling back to {self.snapshot} ({outcome.why})")
        super().run()
        if "healthy" in outcome.times and runstate is not None:
            runstate.vm_unstuck(self.target.name)
        return outcome

    def _stop_reason(self) -> str | None:
        """Only an interrupt: a halt after --max-fail came from this VM's own failure."""
        runstate = self.fleet.runstate
        why = runstate.interrupted() if runstate is not None else None
        return f"run interrupted ({why})" if why else None

    def _keep_or_release(self, slots: list[Slot], healthy: bool) -> None:
        """Slots it held since it came back unhealthy stay held unless it is healthy now, even
        when the rollback was refused or failed before the VM went down."""
        if self.reused and not healthy:
            self.fleet.held[self.target.name] = slots
            return
        super()._keep_or_release(slots, healthy)

    def _reboot_not_wanted(self) -> str | None:
        return None  # decided in run()

    def _as_now(self) -> Restart:
        return self  # a rollback, whatever HA says (an HA VM's rollback is refused by its proof)

    def _take_slots(self) -> list[Slot]:
        """The slots it still holds (it came back unhealthy from its restart), else new ones."""
        held = self.fleet.held.pop(self.target.name, None)
        if held:
            self.reused = True
            self.outcome.mark("down")
            self.outcome.down_slots = [str(s) for s in held]
            return held
        return super()._take_slots()

    def _ready(self) -> bool:
        """The VM is the one this run snapshotted and holds that snapshot; its partners serve
        (unless it holds its slots already: then no partner can be down with it)."""
        outcome = self.outcome
        assert self.snapshot_proof is not None
        boot_id = self._boot_id()  # first: a hung guest must not age the proof
        try:
            if not self.reused:
                self.admission.partners_healthy()
            self.proof = prove_holds_our_snapshot(
                self.qm,
                self.target.proxmox.name,
                self.snapshot_proof,
                self.snapshot,
                self.target.proxmox.node,
            )
            self.proof.admit(self.target.vmid, "qm rollback")  # HA, quorum: refused here
        except SafetyRefusal as exc:
            outcome.refused = exc.reason
            self.record.refusals.append(f"qm rollback: {exc.reason}")
            return False
        except PvepatchError as exc:
            outcome.refused = str(exc)
            return False
        self.cycle.note("qm rollback", self.proof)
        outcome.before = Identity(boot_id, None, self.proof.pid, node=self.target.proxmox.node)
        return True

    def _boot_id(self) -> str | None:
        """The guest's boot now, when it still answers (a broken update may have cut SSH)."""
        try:
            return self.cycle.guest().boot_id()
        except PvepatchError:
            return None

    def _take_down(self) -> bool:
        outcome = self.outcome
        assert self.proof is not None
        outcome.mark("shutdown_sent")
        began = time.monotonic()
        with ticking(self.cycle.progress, "rolling back", SNAPSHOT_TIMEOUT):
            outcome.rollback = self.qm.rollback(self.proof, self.snapshot)
        outcome.seconds = round(time.monotonic() - began, 1)
        if not outcome.rollback.ok:
            outcome.errors["rollback"] = (
                f"qm rollback failed ({_why(outcome.rollback)}); status: {self._status()}"
            )
            return False
        outcome.rolled_back = True
        outcome.mark("rolled_back")
        return self._seen_stopped(" after its rollback")
