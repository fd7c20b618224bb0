"""The restart of one VM through Proxmox: proven, shut down, started, and seen coming back."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from pvepatch.cycle.options import Fleet, Options
from pvepatch.cycle.record import Identity, RestartOutcome
from pvepatch.cycle.wait import ticking, wait_for
from pvepatch.errors import PvepatchError, SafetyRefusal, last_line, one_line
from pvepatch.guest.facts import Guest
from pvepatch.inventory import Target
from pvepatch.proxmox.parse import AGENT_PORT
from pvepatch.proxmox.preconditions import Proof, prove_same_process, prove_stopped_by_us
from pvepatch.proxmox.qm import Qm
from pvepatch.transport.command import CommandResult
from pvepatch.transport.connections import Connections


class Cycle(Protocol):
    """What a restart needs of its VM's cycle (pvepatch.cycle.actions.VMCycle)."""

    target: Target
    options: Options
    fleet: Fleet
    connections: Connections
    progress: Callable[[str], None]

    def qm(self) -> Qm: ...

    def guest(self) -> Guest: ...

    def prove_running(self, action: str) -> Proof: ...

    def note(self, action: str, proof: Proof) -> None: ...


class Restart:
    """`qm shutdown` (or `qm stop`) and `qm start` for one VM, each on a fresh proof.

    `run()` never raises for an expected failure: each step's error is recorded on the outcome
    so the stage's tests can say which step failed and why.
    """

    def __init__(self, cycle: Cycle):
        self.cycle = cycle
        self.target = cycle.target
        self.options = cycle.options
        self.fleet = cycle.fleet
        self.qm: Qm = cycle.qm()
        self.outcome = RestartOutcome(method=cycle.options.restart_method)
        self.proof: Proof | None = None  # the running VM, proven right before it was taken down
        self._uncertain: str | None = None  # why the VM's state after an interruption is unknown

    def run(self) -> RestartOutcome:
        outcome, name = self.outcome, self.target.name
        others = self.fleet.others_down(name)
        if others:
            names = ", ".join(f"{n} ({why})" for n, why in others.items())
            outcome.refused = f"another VM is down: {names}; refusing to take down a second one"
            return outcome
        try:
            self.proof = self.cycle.prove_running(
                "qm stop" if self.options.restart_method == "stop" else "qm shutdown"
            )
            guest = self.cycle.guest()
            outcome.before = Identity(guest.boot_id(), guest.kernel(), self.proof.pid)
        except SafetyRefusal as exc:
            outcome.refused = exc.reason
            return outcome
        except PvepatchError as exc:
            outcome.refused = one_line(exc)
            return outcome
        try:
            # Down from the moment the shutdown is sent: an interruption inside `qm shutdown`
            # must also start the VM again (and a VM left stopped must be reported).
            self.fleet.down[name] = "shut down by this run for its restart"
            if not self._take_down():
                return outcome
            time.sleep(self.options.restart_pause)
            if not self._start():
                return outcome
            self.fleet.down.pop(name, None)
        except PvepatchError as exc:  # the Proxmox host stopped answering, say: record, go on
            step = "start" if "start_sent" in outcome.times else "shutdown"
            outcome.errors[step] = one_line(exc)
            self._bring_back_if_stopped()
            return outcome
        except BaseException:
            self._bring_back_if_stopped()
            raise
        finally:
            self._note_if_left_stopped()
        self._wait_back()
        return outcome

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
                    proof = prove_same_process(qm, self.target.proxmox.name, self.proof)
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
        try:
            wait_for(
                f"VM {self.target.vmid} to be stopped",
                lambda: self._status() == "stopped",
                timeout=60,
                interval=2,
                progress=self.cycle.progress,
            )
        except PvepatchError as exc:
            outcome.errors["stopped"] = str(exc)
            return False
        outcome.stopped = True
        outcome.mark("stopped")
        return True

    # --- up ----------------------------------------------------------------------------------
    def _start(self) -> bool:
        outcome, qm = self.outcome, self.qm
        assert self.proof is not None
        try:
            proof = prove_stopped_by_us(qm, self.target.proxmox.name, self.proof)
        except SafetyRefusal as exc:
            outcome.errors["start"] = f"start refused: {exc.reason}"
            return False
        self.cycle.note("qm start", proof)
        outcome.mark("start_sent")
        outcome.start = qm.start(proof, skiplock=self.options.skiplock)
        outcome.started = outcome.start.ok and self._status() == "running"
        if not outcome.started:
            outcome.errors["start"] = _why(outcome.start) or f"status {self._status()}"
            return False
        outcome.mark("started")
        return True

    def _wait_back(self) -> None:
        outcome, target, qm = self.outcome, self.target, self.qm
        started = time.monotonic()
        deadline = started + self.options.boot_timeout
        before = outcome.before.boot_id if outcome.before else None
        connections = self.cycle.connections

        def remaining() -> float:
            return max(1.0, deadline - time.monotonic())

        def ssh_with_new_boot() -> str | None:
            transport = connections.probe(target.name, target.ssh)
            boot_id = Guest(transport).boot_id()
            return boot_id if boot_id != before else None

        steps = (
            ("ssh_back", f"SSH to {target.name} with a new boot_id", ssh_with_new_boot, 5.0),
            (
                "port_back",
                f"{AGENT_PORT} in {target.name}",
                lambda: self.cycle.guest().virtio_port_is_chardev(),
                2.0,
            ),
            (
                "agent_back",
                f"qm guest cmd {target.vmid} ping",
                lambda: qm.agent_ping().ok,
                3.0,
            ),
        )
        for name, what, probe, interval in steps:
            try:
                wait_for(
                    what,
                    probe,
                    timeout=remaining(),
                    interval=interval,
                    progress=self.cycle.progress,
                    limit=self.options.boot_timeout,
                    since=started,
                )
            except PvepatchError as exc:
                outcome.errors[name] = str(exc)
                if name == "ssh_back":
                    connections.forget(target.name)
                    return
                continue
            setattr(outcome, name, True)
            outcome.mark(name)

    # --- interruptions -------------------------------------------------------------------------
    def _status(self) -> str:
        try:
            return self.qm.status()
        except PvepatchError as exc:
            return f"unknown ({str(exc).splitlines()[0]})"

    def _bring_back_if_stopped(self) -> None:
        """Interrupted (or cut off) between the shutdown and the start: start the VM again
        rather than leave it down, or, when it cannot be known, leave it reported as down."""
        outcome, name, vmid = self.outcome, self.target.name, self.target.vmid
        if name not in self.fleet.down or self.proof is None:
            return
        if "start_sent" in outcome.times and self._status() == "running":
            return  # started by this run already
        try:
            # A shutdown sent before the interruption goes on inside the guest even though our
            # `qm shutdown` was cut off: wait for it to the end of its timeout, saying so.
            wait_for(
                f"the shutdown of VM {vmid} that was under way",
                lambda: self._status() != "running",
                timeout=self.options.shutdown_timeout + 30,
                interval=2,
                progress=self.cycle.progress,
            )
        except PvepatchError:
            self._uncertain = (
                f"its shutdown was under way when the run was interrupted and it was still "
                f"running {self.options.shutdown_timeout + 30} s later: check it (qm status "
                f"{vmid}) and start it if it stopped"
            )
            outcome.errors["interrupted"] = f"run interrupted; {self._uncertain}"
            return
        try:
            proof = prove_stopped_by_us(self.qm, self.target.proxmox.name, self.proof)
            self.cycle.note("qm start", proof)
            result = self.qm.start(proof, skiplock=self.options.skiplock)
            outcome.errors["interrupted"] = (
                f"run interrupted; VM started again (qm start rc={result.rc})"
            )
        except PvepatchError as exc:
            outcome.errors["interrupted"] = f"run interrupted; starting the VM again failed: {exc}"

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
