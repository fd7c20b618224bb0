"""Before pvepatch touches a VM: what the cluster says of it (where it is, its HA state,
quorum), the config changes a restart would apply, and how old its newest backup is.

`observe` only reads; the preflight's checks show what it saw. `gate` is the patch cycle's own
precondition: the first action that would change the VM (agent, snapshot, apt, restart) runs it
once, whatever tests were selected, and nothing is changed in a VM it refuses.
"""

from __future__ import annotations

import time
from typing import Protocol

from pvepatch.cycle.options import Options
from pvepatch.cycle.record import ClusterFacts, VMRecord
from pvepatch.cycle.snapshot import human_age
from pvepatch.errors import PvepatchError, SafetyRefusal, one_line
from pvepatch.guest.facts import Guest
from pvepatch.inventory import Target
from pvepatch.proxmox.cluster import CLOUDINIT_KEYS, HA_HANDS_OFF, PendingChange, cloudinit_drive
from pvepatch.proxmox.parse import agent_enabled
from pvepatch.proxmox.preconditions import misplaced
from pvepatch.proxmox.qm import Qm

# pvepatch's own change: `qm set --agent enabled=1` on a running VM stays pending until the stop.
OWN_PENDING = "agent"


class Cycle(Protocol):
    target: Target
    options: Options
    record: VMRecord

    def qm(self) -> Qm: ...

    def guest(self) -> Guest: ...


def observe(cycle: Cycle) -> ClusterFacts:
    """What the cluster and the VM's config say now (read-only); problems name what would make
    a patch run leave the VM alone."""
    target, qm, facts = cycle.target, cycle.qm(), ClusterFacts()
    host, node = target.proxmox.name, target.proxmox.node
    try:
        where = qm.resource()
    except PvepatchError as exc:
        facts.problems["node"] = (
            f"Proxmox host {host} did not list the cluster's VMs: {one_line(exc)}"
        )
        return facts
    problem = misplaced(where, target.vmid, host, node)
    if problem or where is None:
        facts.node = where.node if where else None
        facts.problems["node"] = problem or "not listed"
        return facts  # qm on this host cannot see it: nothing more to ask
    facts.node, facts.hastate, facts.ha_managed = where.node, where.hastate, where.ha_managed
    _quorum(qm, facts, host)
    _ha(facts, target.vmid)
    try:
        changes = qm.pending()
    except PvepatchError as exc:
        facts.problems["pending"] = f"qm pending failed: {one_line(exc)}"
        changes = []
    else:
        pending(cycle, facts, changes)
    cloudinit(cycle, facts, changes)
    if cycle.options.max_backup_age is not None:
        _backups(qm, facts, node, cycle.options.max_backup_age)
    return facts


def gate(cycle: Cycle) -> ClusterFacts:
    """Observe once per VM and run (record.once): raise SafetyRefusal with every problem."""

    def check() -> ClusterFacts:
        facts = observe(cycle)
        cycle.record.cluster = facts
        if facts.problems:
            reason = "; ".join(facts.problems.values())
            cycle.record.refusals.append(f"cluster: {reason}")
            raise SafetyRefusal(cycle.target.vmid, reason)
        return facts

    return cycle.record.once("cluster gate", check)  # type: ignore[no-any-return]


def pending(cycle: Cycle, facts: ClusterFacts, changes: list[PendingChange]) -> None:
    """Record the pending config changes; those pvepatch did not make are a problem unless
    --apply-pending was given."""
    ran = cycle.record.agent is not None and cycle.record.agent.enabled_by_run

    def ours(change: PendingChange) -> bool:  # this run's `qm set --agent enabled=1`, unchanged
        return ran and change.key == OWN_PENDING and agent_enabled({"agent": change.new or ""})

    foreign = [c for c in changes if not ours(c)]
    facts.pending = [str(c) for c in changes]
    facts.foreign_pending = [str(c) for c in foreign]
    facts.problems.pop("pending", None)
    if foreign and not cycle.options.apply_pending:
        facts.problems["pending"] = (
            f"its Proxmox config has pending changes pvepatch did not make "
            f"({'; '.join(facts.foreign_pending)}): a restart would apply them. Run with "
            f"--apply-pending to apply them, or revert them (qm set {cycle.target.vmid} "
            f"--revert {','.join(c.key for c in foreign)})"
        )


def cloudinit(cycle: Cycle, facts: ClusterFacts, changes: list[PendingChange]) -> None:
    """A VM with a cloud-init drive: the instance-id its next start gives the guest (PVE
    regenerates the drive at every start) is the one the guest has, and no pending change
    touches the cloud-init config. Else cloud-init would make new SSH host keys at that boot:
    a problem reported before the restart rather than found as a host-key failure after it."""
    qm = cycle.qm()
    facts.problems.pop("cloudinit", None)
    try:
        facts.cloudinit = cloudinit_drive(qm.config())
        if facts.cloudinit is None:
            return
        facts.next_instance_id = qm.cloudinit_instance_id()
        facts.instance_id = cycle.guest().cloud_instance_id()
    except PvepatchError as exc:
        facts.problems["cloudinit"] = (
            f"cannot tell whether its restart changes its cloud-init instance-id: {one_line(exc)}"
        )
        return
    if facts.instance_id is None:
        return  # the guest has no cloud-init record: a new drive changes nothing in it
    why = []
    if facts.next_instance_id != facts.instance_id:
        why.append(
            f"its cloud-init config changed since the guest was set up (instance-id "
            f"{facts.instance_id} now, {facts.next_instance_id} after a restart)"
        )
    keys = [c.key for c in changes if CLOUDINIT_KEYS.fullmatch(c.key)]
    if keys:
        why.append(f"pending changes to its cloud-init config ({', '.join(keys)})")
    if why:
        facts.problems["cloudinit"] = (
            f"its restart would give it a new cloud-init instance-id: {'; '.join(why)}. "
            "cloud-init would then make new SSH host keys (and may upgrade packages), and its "
            "known host key would no longer match. Revert the cloud-init change, or restart it "
            "yourself and update known_hosts"
        )


def _quorum(qm: Qm, facts: ClusterFacts, host: str) -> None:
    try:
        quorum = qm.quorum()
    except PvepatchError as exc:
        facts.problems["quorum"] = f"{host} did not say whether it has quorum: {one_line(exc)}"
        return
    facts.quorum = str(quorum)
    if not quorum.quorate:
        facts.problems["quorum"] = (
            f"the cluster of {host} has no quorum (pvecm status: Quorate: No): a VM shut down "
            "now could not be started again"
        )


def _ha(facts: ClusterFacts, vmid: int) -> None:
    if facts.hastate in HA_HANDS_OFF:
        facts.problems["ha"] = (
            f"HA has VM {vmid} in state '{facts.hastate}': it is not touched until HA is done "
            "with it (or an admin fixed it)"
        )
    elif facts.ha_managed and facts.hastate != "started":
        facts.problems["ha"] = (
            f"VM {vmid} is HA-managed with HA state '{facts.hastate}', not 'started': HA would "
            "undo a restart or keep it off"
        )


def _backups(qm: Qm, facts: ClusterFacts, node: str, max_age: float) -> None:
    facts.backup_checked = True
    try:
        backups = qm.backups(node)
    except PvepatchError as exc:
        facts.problems["backup"] = f"cannot list its backups on {node}: {one_line(exc)}"
        return
    if not backups:
        facts.problems["backup"] = (
            f"no backup of VM {qm.vmid} in the backup storages of {node} "
            f"(--max-backup-age {human_age(max_age)})"
        )
        return
    newest = backups[0]
    facts.newest_backup, facts.backup_volid = float(newest.ctime), newest.volid
    age = time.time() - newest.ctime
    if age > max_age:
        facts.problems["backup"] = (
            f"its newest backup ({newest.volid}) is {human_age(age)} old, older than "
            f"--max-backup-age {human_age(max_age)}"
        )
