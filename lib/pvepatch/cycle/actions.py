"""The actions of a patch cycle for one VM: binding, agent, apt, and what it looks like after."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from pvepatch.cycle.options import Fleet, Options
from pvepatch.cycle.record import (
    AgentOutcome,
    Binding,
    Identity,
    ProofNote,
    RestartOutcome,
    VMRecord,
)
from pvepatch.cycle.restart import Restart
from pvepatch.cycle.wait import wait_for
from pvepatch.errors import PvepatchError, SafetyRefusal, TransportError
from pvepatch.guest.apt import Apt, AptRun, diff_packages
from pvepatch.guest.facts import Guest, service_question
from pvepatch.inventory import Target
from pvepatch.proxmox.parse import AGENT_PORT, agent_enabled, net_macs
from pvepatch.proxmox.preconditions import Proof, prove_running
from pvepatch.proxmox.qm import Qm
from pvepatch.transport.batch import Prefetch
from pvepatch.transport.connections import Connections, RecordingTransport

AGENT_PACKAGE = "qemu-guest-agent"
# What a change inside the guest needs proven besides the binding: room, and dpkg consistent.
FIT = ("free_root", "free_boot", "dpkg_audit")
AGENT_SERVICE = "qemu-guest-agent"
Progress = Callable[[str], None]


class VMCycle:
    """The cycle's actions for one VM, each recorded on its VMRecord."""

    def __init__(
        self,
        record: VMRecord,
        connections: Connections,
        options: Options,
        fleet: Fleet,
        progress: Progress = lambda line: None,
        partners: tuple[Target, ...] = (),
        should_stop: Callable[[], str | None] = lambda: None,
    ):
        self.record = record
        self.partners = partners  # its redundancy group's other members
        self.target: Target = record.target
        self.connections = connections
        self.options = options
        self.fleet = fleet
        self.progress: Progress = lambda line: progress(f"{self.target.name}: {line}")
        self.should_stop = should_stop  # the run's interrupt flag: a reason to stop, or None
        self._guest: Guest | None = None
        self._guest_inner: object | None = None
        self._asked = Prefetch()  # answers asked together, per host (asked_together, ask_ahead)
        self._asking = 0

    # --- connections -----------------------------------------------------------------------
    def guest_transport(self) -> RecordingTransport:
        return RecordingTransport(
            self.connections.guest(self.target), self.record.guest_commands, self._asked
        )

    def guest(self) -> Guest:
        """The guest over the run's connection; kept while that connection lives. Its testinfra
        Host moves to a new connection (after the restart), so testinfra detects the OS once."""
        inner = self.connections.guest(self.target)
        if self._guest is None or self._guest_inner is not inner:
            self._asked.clear()  # an answer from another connection is not this one's
            transport = RecordingTransport(inner, self.record.guest_commands, self._asked)
            self._guest = Guest(transport, self._guest.host if self._guest else None)
            self._guest_inner = inner
        return self._guest

    def _qm_transport(self) -> RecordingTransport:
        return RecordingTransport(
            self.connections.proxmox(self.target), self.record.qm_commands, self._asked
        )

    def qm(self) -> Qm:
        return Qm(self._qm_transport(), self.target.vmid)

    @contextmanager
    def asked_together(self, guest: Sequence[str] = (), qm: Sequence[str] = ()) -> Iterator[None]:
        """Inside the block, the read-only command lines `guest` (Guest.asked) and `qm`
        (Qm.asked) are answered from one round trip per host, sent on entry; each answer is used
        once. The outermost block starts from nothing and drops what is left when it ends, so
        a proof never uses an answer older than its block; a nested block asks only what the
        outer one has not."""
        if not self._asking:
            self._asked.clear()
        self._asking += 1
        try:
            self.ask_ahead(guest, qm)
            yield
        finally:
            self._asking -= 1
            if not self._asking:
                self._asked.clear()

    def ask_ahead(
        self, guest: Sequence[str] = (), qm: Sequence[str] = (), timeout: float = 60.0
    ) -> None:
        """Ask these read-only command lines now, one round trip per host, both hosts at once,
        for the checks that follow within seconds (pvepatch.transport.batch.FRESH_FOR): each
        check takes its answer once, or asks again. A change, a new connection or a proof drops
        what is left. A host that cannot be reached is not asked: its questions fail where they
        are asked, as they would have alone."""
        batches = []
        for questions, connect in (
            (guest, lambda: self.guest().transport),
            (qm, self._qm_transport),
        ):
            try:  # the guest first: its new connection drops what is kept
                transport = connect() if questions else None
            except PvepatchError:
                continue
            if isinstance(transport, RecordingTransport):
                batches.append((transport, questions))
        if len(batches) == 2:  # two hosts: the Proxmox host's batch runs beside the guest's
            other = threading.Thread(
                target=batches[1][0].fetch, args=(batches[1][1], timeout), daemon=True
            )
            other.start()
            batches[0][0].fetch(batches[0][1], timeout)
            other.join()
        elif batches:
            batches[0][0].fetch(batches[0][1], timeout)

    def preflight_questions(self) -> dict[str, list[str]]:
        """What the preflight's checks ask (tests_patch/test_10_preflight.py), to ask ahead."""
        return {
            "guest": Guest.asked(
                "answers", "macs", "hostname", "free_root", "free_boot", "dpkg_audit"
            ),
            "qm": Qm.asked(
                self.target.vmid,
                "status",
                "status",
                "config",
                "config",
                "agent_ping",
                "agent_host_name",
            ),  # status and config: asked by two checks each (the lock check is test_15's)
        }

    def verify_questions(self) -> dict[str, list[str]]:
        """What the verify stage's checks ask (tests_patch/test_50_verify.py, then
        test_55_restart_proof.py's look at the VM as it is now), to ask ahead."""
        guest = Guest.asked("answers", "virtio_port", "agent_service", "boot_id", "kernel")
        if self.target.pihole is not None:
            guest.append(service_question(self.target.pihole.service))
        return {
            "guest": guest,
            "qm": Qm.asked(self.target.vmid, "agent_ping", "status", "run_status"),
        }

    def agent_questions(self) -> dict[str, list[str]]:
        """What ensure_agent asks (testinfra detects the system first), and again what the
        stage's checks ask after it (tests_patch/test_20_guest_agent.py): when ensure_agent
        changes something, the second answers are dropped and the checks ask anew."""
        checks = ("agent_package", "virtio_port", "agent_service")
        return {
            "guest": Guest.asked("system_type", "os_release", "arch", "systemd", *checks, *checks),
            "qm": Qm.asked(self.target.vmid, "config", "config"),
        }

    def apt(self) -> Apt:
        """apt in the guest; its detached commands re-attach over a fresh run connection and
        stop being followed when the run is interrupted."""

        def reconnect() -> RecordingTransport:
            self.connections.forget(self.target.name)
            return self.guest_transport()

        return Apt(
            self.guest_transport(),
            self.options.lock_timeout,
            self.options.command_timeout,
            reconnect=reconnect,
            should_stop=self.should_stop,
        )

    # --- the preconditions of every mutating qm command -------------------------------------
    def proof_questions(self, *also: str) -> dict[str, list[str]]:
        """What a proof asks (and the guest questions `also`), for `asked_together(**...)`."""
        return {
            "qm": Qm.asked(
                self.target.vmid, "run_status", "config", "config_current", "agent_host_name"
            ),
            "guest": Guest.asked("macs", "hostname", *also),
        }

    def prove_running(self, action: str, agent_required: bool = True) -> Proof:
        """Prove, right now, that this VM is running and bound right (MACs, agent host name,
        verified host key), or raise SafetyRefusal. Recorded either way."""
        with self.asked_together(**self.proof_questions()):
            guest: Guest | Exception
            try:
                guest = self.guest()
            except TransportError as exc:
                guest = exc
            try:
                proof = prove_running(self.qm(), self.target.proxmox.name, guest, agent_required)
                proof.admit(self.target.vmid, action, self.options.skiplock)
            except SafetyRefusal as exc:
                self.record.refusals.append(f"{action}: {exc.reason}")
                raise
        self.note(action, proof)
        return proof

    def prove_fit_for_changes(self, action: str) -> Proof:
        """Before changing anything inside the guest (apt, systemctl), whatever tests ran: the VM
        is running and bound right (the agent's host name when it answers), no Proxmox lock,
        room on / and /boot, and dpkg consistent. Raises SafetyRefusal with every reason."""
        with self.asked_together(**self.proof_questions(*FIT)):
            proof = self.prove_running(action, agent_required=False)
            guest, opts = self.guest(), self.options
            problems = []
            for path, need in (("/", opts.min_free_root_mb), ("/boot", opts.min_free_boot_mb)):
                free = guest.free_mb(path)
                if free < need:
                    problems.append(f"only {free} MB free on {path}, need {need}")
            if guest.dpkg_audit():
                problems.append("dpkg --audit reports problems (fix with dpkg --configure -a)")
        if problems:
            reason = "; ".join(problems)
            self.record.refusals.append(f"{action}: {reason}")
            raise SafetyRefusal(self.target.vmid, reason)
        return proof

    def note(self, action: str, proof: Proof) -> None:
        self.record.proofs.append(ProofNote(action, proof.binding, proof.host_key))

    # --- stage 1: the binding as the preflight sees it (read-only) ---------------------------
    def observe_binding(self) -> Binding:
        qm, guest = self.qm(), self.guest()
        binding = Binding(
            macs=sorted(net_macs(qm.config())),
            guest_macs=sorted(guest.macs()),
            ssh_hostname=guest.hostname(),
        )
        binding.agent_answers = qm.agent_ping().ok
        if binding.agent_answers:
            binding.agent_hostname = qm.agent_host_name()
        return binding

    # --- stage 2: the guest agent ----------------------------------------------------------
    def ensure_agent(self) -> AgentOutcome:
        asked = self.agent_questions()
        self.ask_ahead(asked["guest"], asked["qm"])  # the stage's checks take the rest
        return self._ensure_agent()

    def _ensure_agent(self) -> AgentOutcome:
        outcome = AgentOutcome()
        guest, apt, qm = self.guest(), self.apt(), self.qm()
        outcome.installed_before = guest.host.package(AGENT_PACKAGE).is_installed
        if not outcome.installed_before:
            self.prove_fit_for_changes("agent install")
            apt.update()
            apt.install(AGENT_PACKAGE)
            outcome.installed_by_run = True
        outcome.enabled_in_config_before = agent_enabled(qm.config())
        if not outcome.enabled_in_config_before:
            qm.set_agent(self.prove_running("qm set"), True)
            outcome.enabled_by_run = True
            return outcome
        wait_for(
            f"{AGENT_PORT} in {self.target.name}",
            guest.virtio_port_is_chardev,
            timeout=60,
            interval=3,
            progress=self.progress,
        )
        if not guest.host.service(AGENT_SERVICE).is_running:
            self.prove_fit_for_changes("agent start")
            guest.transport.run(
                "systemctl start %s", AGENT_SERVICE, timeout=120, mutating=True
            ).check("cannot start the guest agent")
            outcome.started_by_run = True
        return outcome

    # --- stage 3: apt ------------------------------------------------------------------------
    def patch(self) -> AptRun:
        with self.asked_together(**self.proof_questions(*FIT, "boot_id", "packages")):
            self.prove_fit_for_changes("patch")
            guest, apt = self.guest(), self.apt()
            run = AptRun(boot_id_before=guest.boot_id())
            before = apt.installed()
        run.update, run.lock_waits = apt.update()
        run.planned = apt.planned()
        run.upgrade = apt.dist_upgrade()
        run.autoremove = apt.autoremove()
        # what is left after the apt run, and what the stage's checks ask (test_30_patch.py)
        after = ("packages", "reboot_required", "boot_id", "planned", "packages", "dpkg_audit")
        self.ask_ahead(guest=Guest.asked(*after), timeout=300.0)
        run.changes = diff_packages(before, apt.installed())
        run.reboot_required, run.reboot_packages = guest.reboot_required()
        run.boot_id_after = guest.boot_id()
        return run

    # --- what the VM is now (read-only) --------------------------------------------------------
    def restart(self) -> RestartOutcome:
        """The restart through Proxmox (pvepatch.cycle.restart)."""
        outcome = Restart(self).run()
        if outcome.skipped and "STILL NEEDS A REBOOT" in outcome.skipped:
            self.record.notes.append(outcome.skipped)
        if outcome.skipped and outcome.skipped.startswith("not restarted: "):
            self.record.not_started = outcome.skipped  # the run stopped while it waited
        why = self.fleet.stop_reason()
        if why and "shutdown_sent" in outcome.times:
            state = "healthy again" if "healthy" in outcome.times else "NOT healthy"
            self.record.notes.append(f"{why} during its restart: the restart was finished, {state}")
        return outcome

    def identity(self) -> Identity:
        """The guest's boot and kernel, the hypervisor's QEMU process and its uptime, now."""
        guest, status = self.guest(), self.qm().run_status()
        return Identity(guest.boot_id(), guest.kernel(), status.pid, status.uptime)
