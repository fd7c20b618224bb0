"""The actions of a patch cycle for one VM: binding, agent, apt, and what it looks like after."""

from __future__ import annotations

import time
from collections.abc import Callable

from pvepatch.cycle import cluster, questions
from pvepatch.cycle.admission import lock_vm
from pvepatch.cycle.harestart import HARestart
from pvepatch.cycle.options import Fleet, Options
from pvepatch.cycle.questions import Asking
from pvepatch.cycle.record import (
    AgentOutcome,
    Binding,
    ClusterFacts,
    Identity,
    ProofNote,
    PruneOutcome,
    RestartOutcome,
    RollbackOutcome,
    SnapshotOutcome,
    VMRecord,
)
from pvepatch.cycle.restart import Restart
from pvepatch.cycle.rollback import Rollback
from pvepatch.cycle.snapshot import Snapshots
from pvepatch.cycle.wait import wait_for
from pvepatch.errors import PvepatchError, SafetyRefusal, TransportError, WaitTimeout
from pvepatch.guest.apt import Apt, AptRun, diff_packages
from pvepatch.guest.facts import Guest
from pvepatch.inventory import Target
from pvepatch.proxmox.parse import AGENT_PORT, agent_enabled, net_macs
from pvepatch.proxmox.preconditions import STARTS, Proof, prove_running
from pvepatch.proxmox.qm import Qm
from pvepatch.transport.connections import Connections, RecordingTransport

AGENT_PACKAGE = "qemu-guest-agent"
AGENT_SERVICE = "qemu-guest-agent"
Progress = Callable[[str], None]


class VMCycle(Asking):
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
        super().__init__()  # the answers asked together, per host (cycle.questions)
        self.record = record
        self.partners = partners  # its redundancy group's other members
        self.target: Target = record.target
        self.connections = connections
        self.options = options
        self.fleet = fleet
        self.progress: Progress = lambda line: progress(f"{self.target.name}: {line}")
        self.should_stop = should_stop  # the run's interrupt flag: a reason to stop, or None
        self._snapshots: Snapshots | None = None
        self._created = time.time()
        self._guest: Guest | None = None
        self._guest_inner: object | None = None

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
    def prove_running(self, action: str, agent_required: bool = True) -> Proof:
        """Prove, right now, that this VM is running and bound right (MACs, agent host name,
        verified host key), or raise SafetyRefusal. Recorded either way."""
        with self.asked_together(*questions.proof(self.target)):
            guest: Guest | Exception
            try:
                guest = self.guest()
            except TransportError as exc:
                guest = exc
            try:
                proof = prove_running(
                    self.qm(),
                    self.target.proxmox.name,
                    guest,
                    agent_required,
                    self.target.proxmox.node,
                )
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
        with self.asked_together(*questions.fit(self.target)):
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
        """Record the proof made right before `action`; first, unless the action starts a VM
        this run took down, make sure this run still holds the VM's lock."""
        if action not in STARTS:
            self._still_locked(action)
        self.record.proofs.append(ProofNote(action, proof.binding, proof.host_key))

    def _still_locked(self, action: str) -> None:
        """Raise SafetyRefusal when the VM's lock was taken and is gone (its SSH connection to
        the Proxmox host ended): another run may be changing the VM now."""
        lock = self.fleet.vm_locks.get(self.target.name)
        if lock is None or lock.alive():
            return
        vmid = self.target.vmid
        reason = (
            f"this run lost the lock of VM {vmid} on {lock.place} (its SSH connection ended): "
            f"another pvepatch run may be changing it now, so no {action}"
        )
        self.record.refusals.append(f"{action}: {reason}")
        raise SafetyRefusal(vmid, reason)

    # --- the cluster: where the VM is, HA, quorum, pending changes, backups -----------------
    @property
    def patching(self) -> bool:
        """This run may change VMs (`-m patch`), not only look at them."""
        return self.connections.guard.allow_mutating

    def cluster_facts(self) -> ClusterFacts:
        """What the cluster says of this VM, observed once per run (read-only)."""
        self.record.cluster = self.record.once("cluster", lambda: cluster.observe(self))
        return self.record.cluster

    def cluster_gate(self) -> None:
        """Before the first change to this VM, whatever tests were selected: no other
        pvepatch run is changing it (its lock, then held), it is on its node, the cluster is
        quorate, HA leaves it to us, no pending changes pvepatch did not
        make (unless --apply-pending), a recent backup (with --max-backup-age)."""
        self.record.once("vm lock", self._lock_vm)
        first = "cluster gate" not in self.record.outcomes
        try:
            with self.asked_together(*(questions.cluster(self.target) if first else ([], []))):
                cluster.gate(self)
        except SafetyRefusal:
            lock = self.fleet.vm_locks.pop(self.target.name, None)
            if lock is not None:  # refused for good (record.once): leave it to other runs
                lock.release()
            raise

    def _lock_vm(self) -> None:
        try:
            lock_vm(self)
        except SafetyRefusal as exc:
            self.record.refusals.append(f"lock: {exc.reason}")
            raise

    def pending_before_restart(self) -> list[str]:
        """Right before the shutdown: the pending changes it will apply, in words; raise
        SafetyRefusal when some were not made by pvepatch and --apply-pending was not given."""
        facts = self.record.cluster or ClusterFacts()
        changes = self.qm().pending()
        cluster.pending(self, facts, changes)
        if facts.cloudinit:  # asked again only for a VM with a cloud-init drive
            cluster.cloudinit(self, facts, changes)
        for kind in ("pending", "cloudinit"):
            if kind in facts.problems:
                raise SafetyRefusal(self.target.vmid, facts.problems[kind])
        return facts.pending

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
        self.cluster_gate()
        self.ask_ahead(*questions.agent(self.target))  # the stage's checks take the rest
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

    # --- stage 3: the snapshot before the update --------------------------------------------
    def snapshots(self) -> Snapshots:
        if self._snapshots is None:
            runstate = self.fleet.runstate
            self._snapshots = Snapshots(self, runstate.started if runstate else self._created)
        return self._snapshots

    def take_snapshot(self) -> SnapshotOutcome:
        self.cluster_gate()
        return self.snapshots().take()

    def _snapshot_gate(self) -> None:
        """Whatever tests were selected: a VM whose snapshot was asked for is not updated
        without it (taken here when the snapshot stage did not run)."""
        if not self.snapshots().policy.enabled:
            return
        self.record.snapshot = snap = self.record.once("snapshot", self.take_snapshot)
        if not snap.taken:
            reason = f"its snapshot failed, so nothing was changed in it: {snap.error}"
            self.record.refusals.append(f"patch: {reason}")
            raise SafetyRefusal(self.target.vmid, reason)

    # --- stage 4: apt ------------------------------------------------------------------------
    def patch(self) -> AptRun:
        self.cluster_gate()
        self._snapshot_gate()
        with self.asked_together(*questions.fit(self.target, "boot_id", "packages")):
            self.prove_fit_for_changes("patch")
            guest, apt = self.guest(), self.apt()
            run = AptRun(boot_id_before=guest.boot_id())
            before = apt.installed()
        self.record.packages_before_update = dict(before)
        run.update, run.lock_waits = apt.update()
        run.planned = apt.planned()
        self.record.update_began = True  # the first change in the guest
        run.upgrade = apt.dist_upgrade()
        run.autoremove = apt.autoremove()
        self.ask_ahead(*questions.after_apt(), timeout=300.0)  # apt-get -s takes its time
        run.changes = diff_packages(before, apt.installed())
        run.reboot_required, run.reboot_packages = guest.reboot_required()
        run.boot_id_after = guest.boot_id()
        return run

    # --- what the VM is now (read-only) --------------------------------------------------------
    def restart(self) -> RestartOutcome:
        """The restart through Proxmox (pvepatch.cycle.restart)."""
        try:
            self.cluster_gate()
        except SafetyRefusal as exc:
            return RestartOutcome(self.options.restart_method, refused=exc.reason)
        self._ha_change: str | None = None
        outcome = Restart(self).run()
        if self._ha_change and "shutdown_sent" in outcome.times:
            self.record.notes.append(self._ha_change)
        if outcome.pending_applied:  # seen in the config after the stop
            changes = "; ".join(outcome.pending_applied)
            self.record.notes.append(f"its restart applied pending config changes: {changes}")
        if outcome.skipped and "STILL NEEDS A REBOOT" in outcome.skipped:
            self.record.notes.append(outcome.skipped)
        if outcome.skipped and outcome.skipped.startswith("not restarted: "):
            self.record.not_started = outcome.skipped  # the run stopped while it waited
        why = self.fleet.stop_reason()
        if why and "shutdown_sent" in outcome.times:
            state = "healthy again" if "healthy" in outcome.times else "NOT healthy"
            self.record.notes.append(f"{why} during its restart: the restart was finished, {state}")
        return outcome

    def restarter(self) -> type[Restart]:
        """Through HA or directly with qm, as the cluster has the VM right before its restart
        (after its wait for a down slot): HA may have taken it over or released it since the
        gate (the update takes minutes). The proof before the shutdown checks it again."""
        facts = self.record.cluster
        was = bool(facts and facts.ha_managed)
        try:
            where = self.qm().resource()
        except PvepatchError:
            return HARestart if was else Restart  # the proof says why, if it cannot be proven
        now = bool(where and where.ha_managed)
        if facts is not None and now != was:
            state = f"HA state '{where.hastate}'" if where and where.hastate else "no HA resource"
            self._ha_change = (
                f"HA {'took it over' if now else 'released it'} during the run ({state} right "
                f"before its restart): restarted {'through HA' if now else 'with qm directly'}"
            )
        return HARestart if now else Restart

    def agent_answers_after_update(self) -> bool:
        """`qm guest cmd ping` answers within 30 s (or --boot-timeout when shorter): the
        upgrade may be restarting the agent."""
        qm, timeout = self.qm(), min(30.0, self.options.boot_timeout)
        try:
            wait_for(
                f"the guest agent of {self.target.name} to answer",
                lambda: qm.agent_ping().ok,
                timeout=timeout,
                interval=2,
                progress=self.progress,
            )
        except WaitTimeout:
            return False
        return True

    # --- the end of the cycle: rollback, or pruning of older snapshots ----------------------
    def rollback(self) -> RollbackOutcome:
        snapshots = self.snapshots()
        return Rollback(self, self.record, snapshots.policy, snapshots.proof).run()

    def prune_snapshots(self) -> PruneOutcome:
        return self.snapshots().prune(self.record)

    def list_snapshots(self) -> list[tuple[str, float | None]]:
        """pvepatch's snapshots of this VM and their ages (read-only; old ones get a note)."""
        self.record.snapshots = self.snapshots().listed(self.record, self.options.snapshot_max_age)
        return self.record.snapshots

    def identity(self) -> Identity:
        """The guest's boot and kernel, the node the cluster has the VM on, the hypervisor's
        QEMU process and its uptime, now. The uptime is read fresh and `at` is when it was
        read: an answer asked ahead may be seconds old, and the restart proof compares the
        uptime with the time since our start. A VM on another node than its inventory's (it
        was migrated) has no QEMU process here: pid and uptime stay None."""
        guest, qm = self.guest(), self.qm()
        boot_id, kernel = guest.boot_id(), guest.kernel()
        where = qm.resource()
        node = where.node if where else None
        self._asked.clear()
        if node != self.target.proxmox.node:
            return Identity(boot_id, kernel, at=time.time(), node=node)
        status = qm.run_status()
        return Identity(boot_id, kernel, status.pid, status.uptime, at=time.time(), node=node)
