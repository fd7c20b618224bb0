"""The actions of a patch cycle for one VM: agent, apt, and the restart through Proxmox."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pvepatch.cycle.record import AgentOutcome, RestartOutcome, VMRecord
from pvepatch.cycle.wait import wait_for
from pvepatch.errors import PvepatchError, TransportError
from pvepatch.guest.apt import Apt, AptRun, diff_packages
from pvepatch.guest.facts import Guest
from pvepatch.inventory import Target
from pvepatch.proxmox.qm import AGENT_PORT, Qm, agent_enabled
from pvepatch.transport.connections import Connections, RecordingTransport

AGENT_PACKAGE = "qemu-guest-agent"
AGENT_SERVICE = "qemu-guest-agent"


@dataclass(frozen=True)
class Options:
    """The run's safety and timing options (from the command line)."""

    restart_method: str = "shutdown"
    skiplock: bool = False
    hard_stop_fallback: bool = False
    shutdown_timeout: int = 180
    stop_timeout: int = 60
    boot_timeout: float = 600.0
    restart_pause: float = 5.0
    lock_timeout: int = 600
    command_timeout: float = 1800.0
    min_free_root_mb: int = 500
    min_free_boot_mb: int = 100


@dataclass
class Fleet:
    """Which VMs this run has taken down and not brought back (never two at once)."""

    down: dict[str, str] = field(default_factory=dict)

    def others_down(self, name: str) -> dict[str, str]:
        return {n: why for n, why in self.down.items() if n != name}


class VMCycle:
    """The cycle's actions for one VM, each recorded on its VMRecord."""

    def __init__(self, record: VMRecord, connections: Connections, options: Options, fleet: Fleet):
        self.record = record
        self.target: Target = record.target
        self.connections = connections
        self.options = options
        self.fleet = fleet
        self._guest: Guest | None = None
        self._guest_inner: object | None = None

    # --- connections -----------------------------------------------------------------------
    def guest_transport(self) -> RecordingTransport:
        return RecordingTransport(self.connections.guest(self.target), self.record.guest_commands)

    def guest(self) -> Guest:
        """The guest over the run's connection; kept while that connection lives, so testinfra
        detects the OS once, not once per check."""
        inner = self.connections.guest(self.target)
        if self._guest is None or self._guest_inner is not inner:
            self._guest = Guest(RecordingTransport(inner, self.record.guest_commands))
            self._guest_inner = inner
        return self._guest

    def qm(self) -> Qm:
        transport = RecordingTransport(
            self.connections.proxmox(self.target), self.record.qm_commands
        )
        return Qm(transport, self.target.vmid)

    def apt(self) -> Apt:
        return Apt(self.guest_transport(), self.options.lock_timeout, self.options.command_timeout)

    # --- stage 2: the guest agent ----------------------------------------------------------
    def ensure_agent(self) -> AgentOutcome:
        outcome = AgentOutcome()
        guest, apt, qm = self.guest(), self.apt(), self.qm()
        outcome.installed_before = guest.host.package(AGENT_PACKAGE).is_installed
        if not outcome.installed_before:
            apt.update()
            apt.install(AGENT_PACKAGE)
            outcome.installed_by_run = True
        config = qm.config()
        outcome.enabled_in_config_before = agent_enabled(config)
        if not outcome.enabled_in_config_before:
            qm.set_agent(True)
            outcome.enabled_by_run = True
            return outcome
        wait_for(
            f"{AGENT_PORT} in {self.target.name}",
            guest.virtio_port_is_chardev,
            timeout=60,
            interval=3,
        )
        if not guest.host.service(AGENT_SERVICE).is_running:
            guest.transport.run(
                "systemctl start %s", AGENT_SERVICE, timeout=120, mutating=True
            ).check("cannot start the guest agent")
            outcome.started_by_run = True
        return outcome

    # --- stage 3: apt ------------------------------------------------------------------------
    def patch(self) -> AptRun:
        guest, apt = self.guest(), self.apt()
        run = AptRun()
        self.record.facts.setdefault("boot_id_before_patch", guest.boot_id())
        before = apt.installed()
        run.update, run.lock_waits = apt.update()
        run.upgrade = apt.dist_upgrade()
        run.autoremove = apt.autoremove()
        run.changes = diff_packages(before, apt.installed())
        run.reboot_required, run.reboot_packages = guest.reboot_required()
        self.record.facts["boot_id_after_patch"] = guest.boot_id()
        return run

    # --- stage 4: the restart through Proxmox ------------------------------------------------
    def restart(self) -> RestartOutcome:
        """Shut down (or stop) through `qm`, start, and wait for SSH, the port and the agent.

        Never raises for an expected failure: each step's error is recorded on the outcome so
        the stage's tests can say which step failed and why.
        """
        opts, qm = self.options, self.qm()
        outcome = RestartOutcome(method=opts.restart_method)
        outcome.refused = self._refusal(qm)
        if outcome.refused:
            return outcome
        guest = self.guest()
        self.record.facts["boot_id_before"] = guest.boot_id()
        self.record.facts["kernel_before"] = guest.kernel()
        self.record.facts["qemu_pid_before"] = qm.run_status().pid
        try:
            # Down from the moment the shutdown is sent: an interruption inside `qm shutdown`
            # must also start the VM again (and a VM left stopped must be reported).
            self.fleet.down[self.target.name] = "shut down by this run for its restart"
            if not self._take_down(qm, outcome):
                return outcome
            time.sleep(opts.restart_pause)
            outcome.mark("start_sent")
            outcome.start = qm.start(skiplock=opts.skiplock)
            outcome.started = outcome.start.ok and self._status(qm) == "running"
            if not outcome.started:
                outcome.errors["start"] = _why(outcome.start) or f"status {self._status(qm)}"
                return outcome
            outcome.mark("started")
            self.fleet.down.pop(self.target.name, None)
        except BaseException:
            self._bring_back_if_stopped(qm, outcome)
            raise
        finally:
            self._note_if_left_stopped(qm)
        self._wait_back(qm, outcome)
        return outcome

    def _refusal(self, qm: Qm) -> str | None:
        others = self.fleet.others_down(self.target.name)
        if others:
            names = ", ".join(f"{n} ({why})" for n, why in others.items())
            return f"another VM is down: {names}; refusing to take down a second one"
        lock = qm.config().get("lock")
        if lock and not self.options.skiplock:
            return f"VM is locked ({lock}) on {self.target.proxmox.name}; not restarting it (use --skiplock to override)"
        return None

    def _take_down(self, qm: Qm, outcome: RestartOutcome) -> bool:
        opts = self.options
        outcome.mark("shutdown_sent")
        if opts.restart_method == "stop":
            outcome.hard_stop = qm.stop(opts.stop_timeout, skiplock=opts.skiplock)
        else:
            outcome.shutdown = qm.shutdown(opts.shutdown_timeout, skiplock=opts.skiplock)
            if not outcome.shutdown.ok:
                if not opts.hard_stop_fallback:
                    outcome.errors["shutdown"] = (
                        f"clean shutdown failed ({_why(outcome.shutdown)}); the VM was left as it "
                        f"is (status: {self._status(qm)}); no power-off without --hard-stop-fallback"
                    )
                    return False
                outcome.hard_stop = qm.stop(opts.stop_timeout, skiplock=opts.skiplock)
        if outcome.hard_stop is not None and not outcome.hard_stop.ok:
            outcome.errors["stop"] = (
                f"qm stop failed ({_why(outcome.hard_stop)}); status: {self._status(qm)}"
            )
            return False
        try:
            wait_for(
                f"VM {self.target.vmid} to be stopped",
                lambda: self._status(qm) == "stopped",
                timeout=60,
                interval=2,
            )
        except PvepatchError as exc:
            outcome.errors["stopped"] = str(exc)
            return False
        outcome.stopped = True
        outcome.mark("stopped")
        return True

    def _wait_back(self, qm: Qm, outcome: RestartOutcome) -> None:
        deadline = time.monotonic() + self.options.boot_timeout
        before = self.record.facts["boot_id_before"]

        def remaining() -> float:
            return max(1.0, deadline - time.monotonic())

        def ssh_with_new_boot() -> str | None:
            transport = self.connections.probe(self.target.name, self.target.ssh)
            boot_id = Guest(transport).boot_id()
            return boot_id if boot_id != before else None

        steps = (
            ("ssh_back", f"SSH to {self.target.name} with a new boot_id", ssh_with_new_boot, 5.0),
            (
                "port_back",
                f"{AGENT_PORT} in {self.target.name}",
                lambda: self.guest().virtio_port_is_chardev(),
                2.0,
            ),
            (
                "agent_back",
                f"qm guest cmd {self.target.vmid} ping",
                lambda: qm.agent_ping().ok,
                3.0,
            ),
        )
        for name, what, probe, interval in steps:
            try:
                wait_for(what, probe, timeout=remaining(), interval=interval)
            except PvepatchError as exc:
                outcome.errors[name] = str(exc)
                if name == "ssh_back":
                    self.connections.forget(self.target.name)
                    return
                continue
            setattr(outcome, name, True)
            outcome.mark(name)

    def _status(self, qm: Qm) -> str:
        try:
            return qm.status()
        except PvepatchError as exc:
            return f"unknown ({str(exc).splitlines()[0]})"

    def _bring_back_if_stopped(self, qm: Qm, outcome: RestartOutcome) -> None:
        """Interrupted between stop and start: start the VM again rather than leave it down."""
        if self.target.name not in self.fleet.down:
            return
        try:
            # A shutdown sent just before the interruption may still be under way on the host:
            # let it finish (bounded) rather than find the VM "already running" and then stopped.
            deadline = time.monotonic() + min(self.options.shutdown_timeout, 90)
            while self._status(qm) == "running" and time.monotonic() < deadline:
                time.sleep(2)
            if self._status(qm) == "running":
                outcome.errors["interrupted"] = "run interrupted; the VM is still running"
                return
            result = qm.start(skiplock=self.options.skiplock)
            outcome.errors["interrupted"] = (
                f"run interrupted; VM started again (qm start rc={result.rc})"
            )
        except (PvepatchError, TransportError) as exc:
            outcome.errors["interrupted"] = f"run interrupted; starting the VM again failed: {exc}"

    def _note_if_left_stopped(self, qm: Qm) -> None:
        if self.target.name in self.fleet.down and self._status(qm) == "running":
            self.fleet.down.pop(self.target.name, None)
        elif self.target.name in self.fleet.down:
            self.fleet.down[self.target.name] = (
                f"LEFT STOPPED by this run (status: {self._status(qm)})"
            )


def _why(result: object) -> str:
    stderr = getattr(result, "stderr", "") or ""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    rc = getattr(result, "rc", "?")
    return f"exit {rc}: {lines[-1]}" if lines else f"exit {rc}"
