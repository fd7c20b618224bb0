"""Admission of one VM's restart under the down budget: its down slots and its partners' health."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pvepatch.cycle.options import Fleet, Options
from pvepatch.cycle.record import RestartOutcome
from pvepatch.cycle.slots import HOST_SLOT_DIR, Busy, Slot, SlotTable, take
from pvepatch.errors import PvepatchError, SafetyRefusal, one_line
from pvepatch.guest import dns
from pvepatch.guest.facts import Guest
from pvepatch.inventory import Target
from pvepatch.proxmox.qm import Qm
from pvepatch.transport.connections import Connections


class Candidate(Protocol):
    """What admission needs of the VM's cycle (pvepatch.cycle.actions.VMCycle)."""

    target: Target
    options: Options
    fleet: Fleet
    connections: Connections
    progress: Callable[[str], None]
    partners: tuple[Target, ...]


class Admission:
    """The down budget for one VM's restart: the slots it takes down before its shutdown (the
    run's and the Proxmox host's), its redundancy partners' health right before it, and whether
    it gives the slots back after its restart."""

    def __init__(self, cycle: Candidate, outcome: RestartOutcome, qm: Qm):
        self.cycle = cycle
        self.target = cycle.target
        self.options = cycle.options
        self.fleet = cycle.fleet
        self.outcome = outcome
        self.qm = qm

    def take_slots(self) -> list[Slot]:
        """The run's slot (budget across its workers and hosts), then the Proxmox host's (across
        runs): waits up to --lock-timeout, saying for what; raises PvepatchError."""
        runstate, target, opts = self.fleet.runstate, self.target, self.options
        if runstate is None:  # no run state (a bare VMCycle): never a second VM down here
            self._alone()
            return []
        slots: list[Slot] = []
        try:
            for table in (runstate.slots(), self._host_table()):
                slots.append(
                    take(
                        table,
                        opts.max_down,
                        target.redundancy_group,
                        runstate.holder(target.name),
                        opts.slot_timeout,
                        self.cycle.progress,
                        self._no_slot_will_come,
                    )
                )
        except BaseException:
            for slot in reversed(slots):
                slot.release()
            raise
        self.outcome.mark("down")
        self.outcome.down_slots = [str(s) for s in slots]
        return slots

    def _alone(self) -> None:
        """Without a run state: down only while no other VM of this process is down."""
        others = self.fleet.others_down(self.target.name)
        if others:
            names = ", ".join(f"{n} ({why})" for n, why in others.items())
            raise PvepatchError(f"another VM is down: {names}; not taking down a second")
        self.outcome.mark("down")

    def _host_table(self) -> SlotTable:
        return host_table(self.cycle)

    def _no_slot_will_come(self) -> str | None:
        """Why waiting for a down slot is pointless: the run stops, or VMs of this run that
        did not come back hold the whole budget until the run ends."""
        why = self.fleet.stop_reason()
        runstate = self.fleet.runstate
        stuck = runstate.stuck() if runstate else []
        partners = [p.name for p in self.cycle.partners if p.name in stuck]
        if why is None and partners:
            why = (
                f"its redundancy partner {', '.join(partners)} is not healthy: it did not come "
                "back healthy after its restart and counts as down until the run ends"
            )
        if why is None and len(stuck) >= self.options.max_down:
            why = (
                f"{', '.join(stuck)} did not come back healthy and hold(s) the down budget "
                f"(--max-down {self.options.max_down}) until the run ends"
            )
        return why

    def partners_healthy(self) -> None:
        """Every partner in the VM's redundancy group serves, checked now: a Pi-hole answers a
        real DNS query, another host answers over SSH. Raises SafetyRefusal."""
        for partner in self.cycle.partners:
            try:
                if partner.pihole is not None:
                    spec = partner.pihole
                    answer = dns.query(spec.server, spec.port, spec.resolve_name, spec.protocol)
                    problem = None if answer.resolved else f"DNS answers {answer}"
                else:
                    Guest(self.cycle.connections.get(partner.name, partner.ssh)).answers()
                    problem = None
            except PvepatchError as exc:
                problem = one_line(exc)
            if problem:
                raise SafetyRefusal(
                    self.target.vmid,
                    f"its redundancy partner {partner.name} is not healthy ({problem}); "
                    "not taking it down while its partner does not serve",
                )

    def keep_or_release(self, slots: list[Slot], healthy: bool) -> None:
        """A VM counts as down until its checks passed: one that never went down or came back
        healthy gives its slots back; any other keeps them until the run ends."""
        if healthy or "shutdown_sent" not in self.outcome.times or self._still_serving():
            for slot in reversed(slots):
                slot.release()
        else:
            self.fleet.held[self.target.name] = slots
            if self.fleet.runstate is not None:
                self.fleet.runstate.vm_stuck(self.target.name)

    def _still_serving(self) -> bool:
        """A shutdown the guest refused: it never stopped, is running, and answers over SSH
        in the same boot as before (so it is not down, it was never taken down)."""
        outcome = self.outcome
        if outcome.stopped or "start_sent" in outcome.times or outcome.before is None:
            return False
        try:
            if self.qm.status() != "running":
                return False
            guest = Guest(self.cycle.connections.probe(self.target.name, self.target.ssh))
            return guest.boot_id() == outcome.before.boot_id
        except PvepatchError:
            return False


def host_table(cycle: Candidate) -> SlotTable:
    """The Proxmox host's table of down slots and VM locks, shared by every run on that host."""
    proxmox = cycle.target.proxmox
    return SlotTable(
        proxmox.name,
        HOST_SLOT_DIR,
        lambda command, args: cycle.connections.hold(proxmox.name, proxmox.ssh, command, *args),
    )


def lock_vm(cycle: Candidate) -> None:
    """Before the first change to the VM: take its lock on its Proxmox host, held until this
    run (or its worker) ends, so that a second pvepatch run never changes it meanwhile (its
    update, snapshot, restart, rollback or the pruning of this run's snapshots). Raise
    SafetyRefusal naming the run that holds it."""
    fleet, target = cycle.fleet, cycle.target
    if fleet.runstate is None or target.name in fleet.vm_locks:
        return
    try:
        got = host_table(cycle).try_lock_vm(target.vmid, fleet.runstate.holder(target.name))
    except PvepatchError as exc:
        raise SafetyRefusal(target.vmid, one_line(exc)) from exc
    if isinstance(got, Busy):
        raise SafetyRefusal(
            target.vmid,
            f"another pvepatch run is changing VM {target.vmid}: its lock on {got.place} is "
            f"{got.why}; this run leaves it alone",
        )
    fleet.vm_locks[target.name] = got
