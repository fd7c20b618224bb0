"""The restart of one VM through Proxmox: proven, shut down, started, and seen coming back."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from pvepatch.cycle import comeback, questions
from pvepatch.cycle.admission import Admission, Candidate
from pvepatch.cycle.record import Identity, RestartOutcome
from pvepatch.cycle.slots import Slot
from pvepatch.cycle.wait import ticking, wait_for
from pvepatch.errors import PvepatchError, SafetyRefusal, last_line, one_line
from pvepatch.guest.facts import Guest
from pvepatch.proxmox.cluster import PendingChange
from pvepatch.proxmox.preconditions import Proof, prove_same_process, prove_stopped_by_us
from pvepatch.proxmox.qm import Qm
from pvepatch.transport.command import CommandResult


class Cycle(Candidate, Protocol):
    """What a restart needs of its VM's cycle (pvepatch.cycle.actions.VMCycle)."""

    def qm(self) -> Qm: ...

    def guest(self) -> Guest: ...

    def prove_running(self, action: str) -> Proof: ...

    def asked_together(
        self, guest: Sequence[str] = (), qm: Sequence[str] = ()
    ) -> AbstractContextManager[None]: ...

    def ask_ahead(
        self, guest: Sequence[str] = (), qm: Sequence[str] = (), timeout: float = 60.0
    ) -> None: ...

    def note(self, action: str, proof: Proof) -> None: ...

    def pending_before_restart(self) -> list[str]: ...

    def restarter(self) -> type[Restart]: ...


class Restart:
    """`qm shutdown` (or `qm stop`) and `qm start` for one VM, each on a fresh proof.

    `run()` never raises for an expected failure: each step's error is recorded on the outcome
    so the stage's tests can say which step failed and why.
    """

    def __init__(self, cycle: Cycle, outcome: RestartOutcome | None = None):
        self.cycle = cycle
        self.target = cycle.target
        self.options = cycle.options
        self.fleet = cycle.fleet
        self.qm: Qm = cycle.qm()
        self.outcome = outcome or RestartOutcome(method=cycle.options.restart_method)
        self.admission = Admission(cycle, self.outcome, self.qm)
        self.proof: Proof | None = None  # the running VM, proven right before it was taken down
        self._uncertain: str | None = None  # why the VM's state after an interruption is unknown
        self._config_before: dict[str, str] | None = None  # `qm config --current` before the stop

    def run(self) -> RestartOutcome:
        outcome = self.outcome
        why = self._stop_reason()
        if why:
            outcome.refused = f"not started: {why}"
            return outcome
        skip = self._reboot_not_wanted()
        if skip:
            outcome.skipped = skip
            return outcome
        try:
            slots = self._take_slots()
        except PvepatchError as exc:
            why = self._stop_reason()
            if why:  # interrupted or halted while it waited: not a failure of this VM
                outcome.skipped = f"not restarted: {why}"
            else:
                outcome.refused = one_line(exc)
            return outcome
        healthy = False
        try:
            runner = self._as_now()
            if not runner._ready():
                return outcome
            healthy = runner._down_and_up()
            return outcome
        finally:
            self._keep_or_release(slots, healthy)

    def _as_now(self) -> Restart:
        """The restart of the kind the cluster asks for now, after the wait for a down slot
        (which may be long): through HA or with qm directly (pvepatch.cycle.harestart)."""
        kind = self.cycle.restarter()
        return self if type(self) is kind else kind(self.cycle, self.outcome)

    # the proof action of the start (pvepatch.proxmox.preconditions)
    START = "qm start"

    def _stop_action(self) -> str:
        return "qm stop" if self.options.restart_method == "stop" else "qm shutdown"

    def _stop_reason(self) -> str | None:
        return self.fleet.stop_reason()

    def _take_slots(self) -> list[Slot]:
        return self.admission.take_slots()

    def _keep_or_release(self, slots: list[Slot], healthy: bool) -> None:
        self.admission.keep_or_release(slots, healthy)

    def _ready(self) -> bool:
        """Right before the shutdown: the partners are healthy, nothing installs packages in
        the guest, and the VM is proven running and bound right."""
        outcome = self.outcome
        asked = questions.before_shutdown(self.target)
        try:
            self.admission.partners_healthy()
            with self.cycle.asked_together(*asked):  # one round trip per host for all of it
                busy = self.cycle.guest().package_managers_running()
                if busy:
                    raise SafetyRefusal(
                        self.target.vmid, f"apt/dpkg is running in the guest: {one_line(busy)}"
                    )
                self.proof = self.cycle.prove_running(self._stop_action())
                self.cycle.pending_before_restart()
                self._config_before = self.qm.config(current=True)
                guest = self.cycle.guest()
                outcome.before = Identity(
                    guest.boot_id(), guest.kernel(), self.proof.pid, node=self.target.proxmox.node
                )
        except SafetyRefusal as exc:
            outcome.refused = exc.reason
            return False
        except PvepatchError as exc:
            outcome.refused = one_line(exc)
            return False
        return True

    def _down_and_up(self) -> bool:
        """Shut down, start, wait for it: True once its post-restart checks passed."""
        outcome, name = self.outcome, self.target.name
        try:
            # Down from the moment the shutdown is sent: an error inside `qm shutdown` must
            # also start the VM again (and a VM left stopped must be reported).
            self.fleet.down[name] = "shut down by this run for its restart"
            if not self._take_down():
                self._bring_back_if_stopped(wait=False)  # qm has waited its timeout already
                return False
            self._applied_at_stop()
            if self.options.restart_pause:
                time.sleep(self.options.restart_pause)
            if not self._start():
                return False
            self.fleet.down.pop(name, None)
        except SafetyRefusal as exc:  # refused by the command's own admit: nothing was sent
            step = "start" if "start_sent" in outcome.times else "shutdown"
            outcome.errors[step] = f"refused: {exc.reason}"
            self._bring_back_if_stopped(wait=False)
            return False
        except PvepatchError as exc:  # the Proxmox host stopped answering, say: record, go on
            step = "start" if "start_sent" in outcome.times else "shutdown"
            outcome.errors[step] = one_line(exc)
            self._bring_back_if_stopped()
            return False
        except BaseException:
            self._bring_back_if_stopped()
            raise
        finally:
            self._note_if_left_stopped()
        if not self._wait_back():
            return False
        outcome.mark("healthy")
        return True

    # --- whether it restarts ------------------------------------------------------------------
    def _reboot_not_wanted(self) -> str | None:
        """--reboot never/if-required: why this VM is not restarted, or None."""
        policy = self.options.reboot
        if policy == "always":
            return None
        try:
            why = self.cycle.guest().why_reboot()
        except PvepatchError as exc:
            if policy == "never":
                return f"--reboot never (whether it needs one is unknown: {one_line(exc)})"
            return None  # unknown: restart, as "always" would
        if policy == "never":
            return "--reboot never" + (f"; STILL NEEDS A REBOOT: {why}" if why else "")
        return None if why else "--reboot if-required: the guest needs no reboot"

    # --- down --------------------------------------------------------------------------------
    def _take_down(self) -> bool:
        opts, outcome, qm = self.options, self.outcome, self.qm
        assert self.proof is not None
        outcome.mark("shutdown_sent")
        if opts.restart_method == "stop":
            outcome.hard_stop = qm.stop(self.proof, opts.stop_timeout, skiplock=opts.skiplock)
        else:
            with ticking(self.cycle.progress, "shutting down", opts.shutdown_timeout):
                outcome.shutdown = qm.shutdown(
                    self.proof, opts.shutdown_timeout, skiplock=opts.skiplock
                )
            if not outcome.shutdown.ok:
                if not opts.hard_stop_fallback:
                    outcome.errors["shutdown"] = (
                        f"clean shutdown failed ({_why(outcome.shutdown)}); the VM was left as it "
                        f"is (status: {self._status()}); no power-off without --hard-stop-fallback"
                    )
                    return False
                try:
                    proof = prove_same_process(
                        qm, self.target.proxmox.name, self.proof, self.target.proxmox.node
                    )
                except SafetyRefusal as exc:
                    outcome.errors["stop"] = f"hard stop refused: {exc.reason}"
                    return False
                self.cycle.note("qm stop", proof)
                outcome.hard_stop = qm.stop(proof, opts.stop_timeout, skiplock=opts.skiplock)
        if outcome.hard_stop is not None and not outcome.hard_stop.ok:
            outcome.errors["stop"] = (
                f"qm stop failed ({_why(outcome.hard_stop)}); status: {self._status()}"
            )
            return False
        return self._seen_stopped()

    def _seen_stopped(self, after: str = "") -> bool:
        """`qm status` says stopped within 60 s (after the command that stopped it)."""
        try:
            wait_for(
                f"VM {self.target.vmid} to be stopped{after}",
                lambda: self._status() == "stopped",
                timeout=60,
                interval=2,
                progress=self.cycle.progress,
            )
        except PvepatchError as exc:
            self.outcome.errors["stopped"] = str(exc)
            return False
        self.outcome.stopped = True
        self.outcome.mark("stopped")
        return True

    def _applied_at_stop(self) -> None:
        """What the stop applied (PVE applies pending changes when it stops a VM): the config
        the running VM used, compared with the config now. Also a change made after the check
        before the shutdown shows here."""
        if self._config_before is None:
            return
        try:
            after = self.qm.config(current=True)
        except PvepatchError as exc:
            self.outcome.errors["pending"] = (
                f"the config after the stop is unknown: {one_line(exc)}"
            )
            return
        before = self._config_before
        self.outcome.pending_applied = [
            str(change)
            for change in (
                PendingChange(key, before.get(key), after.get(key), delete=key not in after)
                for key in sorted(set(before) | set(after))
                if before.get(key) != after.get(key) and key != "lock"
            )
        ]

    # --- up ----------------------------------------------------------------------------------
    def _start(self) -> bool:
        outcome, qm = self.outcome, self.qm
        assert self.proof is not None
        try:
            with self.cycle.asked_together(*questions.before_start(self.target)):
                proof = prove_stopped_by_us(
                    qm, self.target.proxmox.name, self.proof, self.target.proxmox.node
                )
            proof.admit(self.target.vmid, self.START, self.options.skiplock)
        except SafetyRefusal as exc:
            outcome.errors["start"] = f"start refused: {exc.reason}"
            return False
        self.cycle.note(self.START, proof)
        outcome.mark("start_sent")
        outcome.start = self._send_start(proof)
        outcome.started = outcome.start.ok and self._seen_started()
        if not outcome.started:
            outcome.errors.setdefault("start", _why(outcome.start) or f"status {self._status()}")
            return False
        outcome.mark("started")
        return True

    def _send_start(self, proof: Proof) -> CommandResult:
        return self.qm.start(proof, skiplock=self.options.skiplock)

    def _seen_started(self) -> bool:
        """`qm start` returns once QEMU runs: its status says so at once."""
        return self._status() == "running"

    def _wait_back(self) -> bool:
        """SSH with a new boot_id, the virtio port, the agent, and DNS for a Pi-hole: True when
        every check passed (the VM is healthy, no longer down)."""
        return comeback.wait_back(self.cycle, self.outcome, self.qm)

    # --- interruptions -------------------------------------------------------------------------
    def _status(self) -> str:
        try:
            return self.qm.status()
        except PvepatchError as exc:
            return f"unknown ({str(exc).splitlines()[0]})"

    def _known_status(self, timeout: float = 60.0) -> str:
        """`qm status`, asked again while it is unknown (the host unreachable for a moment)."""

        def known() -> str | None:
            status = self._status()
            return None if status.startswith("unknown") else status

        try:
            return wait_for(
                f"the status of VM {self.target.vmid}",
                known,
                timeout=timeout,
                interval=2,
                progress=self.cycle.progress,
            )
        except PvepatchError:
            return self._status()

    def _bring_back_if_stopped(self, wait: bool = True) -> None:
        """Cut off between the shutdown and the start, or a shutdown that failed: start the VM
        again rather than leave it down, or, when it cannot be known, leave it reported as down.
        `wait`: our `qm shutdown` was cut off, so the shutdown may still be under way in the
        guest: wait for it to the end of its timeout first (qm waited it out otherwise)."""
        outcome, name, vmid = self.outcome, self.target.name, self.target.vmid
        if name not in self.fleet.down or self.proof is None:
            return
        if "start_sent" in outcome.times and self._known_status() == "running":
            return  # started by this run already
        limit = self.options.shutdown_timeout + 30
        try:
            if wait:
                wait_for(
                    f"the shutdown of VM {vmid} that was under way",
                    lambda: self._status() != "running",
                    timeout=limit,
                    interval=2,
                    progress=self.cycle.progress,
                )
        except PvepatchError:
            self._uncertain = (
                f"its shutdown was under way when the restart was cut off and it was still "
                f"running {limit} s later: check it (qm status {vmid}) and start it if it stopped"
            )
            outcome.errors["brought_back"] = self._uncertain
            return
        if self._known_status() == "running":
            return  # the shutdown never took: the guest still runs (reported as it is)
        try:
            proof = prove_stopped_by_us(
                self.qm, self.target.proxmox.name, self.proof, self.target.proxmox.node
            )
            self.cycle.note(self.START, proof)
            result = self._send_start(proof)
            outcome.errors["brought_back"] = f"{self.START} sent again (rc={result.rc})"
        except PvepatchError as exc:
            outcome.errors["brought_back"] = f"starting the VM again failed: {exc}"

    def _note_if_left_stopped(self) -> None:
        name = self.target.name
        if name not in self.fleet.down:
            return
        if self._uncertain:
            self.fleet.down[name] = f"NOT KNOWN TO BE RUNNING: {self._uncertain}"
        elif self._status() == "running":
            self.fleet.down.pop(name, None)
        else:
            self.fleet.down[name] = f"LEFT STOPPED by this run (status: {self._status()})"


def _why(result: CommandResult) -> str:
    line = last_line(result.stderr)
    return f"exit {result.rc}: {line}" if line else f"exit {result.rc}"
