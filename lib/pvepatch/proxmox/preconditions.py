"""What must be proven about a VM right before a mutating `qm` command, and the proof itself.

Safety is a property of the action, not of the order or selection of tests: `Qm.shutdown`,
`Qm.stop`, `Qm.start` and `Qm.set_agent` take a `Proof`, and a `Proof` is made only here, by
asking Proxmox and the guest right now. Whatever tests were selected or skipped, no mutating
`qm` command is sent for a VM whose binding and state this process did not just prove.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from pvepatch.errors import PvepatchError, SafetyRefusal, one_line
from pvepatch.proxmox.cluster import HA_HANDS_OFF, Quorum, VMResource
from pvepatch.proxmox.parse import RunStatus, agent_enabled, net_macs

# A binding proof older than this is not trusted for a shutdown, stop or set.
MAX_PROOF_AGE = 60.0
# The status each action needs; every other action needs the VM running.
WANTED_STATUS = {
    "qm start": ("stopped",),
    "ha start": ("stopped",),
    "qm rollback": ("running", "stopped"),
}
# What `qm` hands to the HA manager for an HA resource instead of doing it (a queued request,
# reference §1.1); a rollback fights the HA manager (§1.6).
HA_QUEUED = {"qm shutdown", "qm stop", "qm start", "qm rollback"}
# The requests pvepatch makes of the HA manager itself (pvepatch.cycle.harestart): only for
# HA-managed VMs.
HA_REQUESTS = {"ha stop", "ha start"}
# Actions whose proof may be old: the VM was proven and then taken down by this run.
STARTS = {"qm start", "ha start"}
_minting: ContextVar[bool] = ContextVar("pvepatch_minting_a_proof", default=False)


class QmView(Protocol):
    """The read-only `qm` questions a proof asks (pvepatch.proxmox.qm.Qm answers them)."""

    vmid: int

    def run_status(self) -> RunStatus: ...

    def config(self, current: bool = False) -> dict[str, str]: ...

    def agent_host_name(self) -> str: ...

    def resource(self) -> VMResource | None: ...

    def quorum(self) -> Quorum: ...


class SnapshotView(QmView, Protocol):
    """The questions of a rollback's proof: the VM's snapshots too."""

    def snapshots(self) -> list[Any]: ...


class GuestView(Protocol):
    """What the proof needs of the guest, over this run's verified SSH connection."""

    def macs(self) -> set[str]: ...

    def hostname(self) -> str: ...

    def host_key(self) -> str | None: ...


@dataclass(frozen=True)
class Proof:
    """The facts proven about one VM at one moment, for the actions they allow."""

    vmid: int
    node: str
    status: str
    pid: int | None  # the QEMU process proven; a hard stop after a failed shutdown needs the same
    lock: str | None
    macs: tuple[str, ...]
    ssh_hostname: str | None
    agent_hostname: str | None
    host_key: str | None
    binding: str  # how the binding was proven, in words, for the record
    hastate: str | None  # the HA state /cluster/resources gave; None: not an HA resource
    ha_managed: bool
    quorate: bool
    at: float

    def __post_init__(self) -> None:
        if not _minting.get():  # also refuses dataclasses.replace() copies made elsewhere
            raise TypeError("a Proof is made only by pvepatch.proxmox.preconditions")

    def admit(
        self, vmid: int, action: str, skiplock: bool = False, node: str | None = None
    ) -> None:
        """Raise SafetyRefusal unless this proof allows `action` on `vmid` (on `node`) now."""
        if vmid != self.vmid:
            raise SafetyRefusal(vmid, f"the proof is for VM {self.vmid}, not VM {vmid}")
        if node is not None and node != self.node:
            raise SafetyRefusal(vmid, f"the proof is for VM {vmid} on {self.node}, not on {node}")
        wanted = WANTED_STATUS.get(action, ("running",))
        if self.status not in wanted:
            raise SafetyRefusal(
                vmid, f"{action} needs the VM {' or '.join(wanted)}, Proxmox said {self.status}"
            )
        if not self.quorate:
            raise SafetyRefusal(
                vmid,
                f"the cluster of {self.node} has no quorum (pvecm status: Quorate: No): "
                "Proxmox cannot start a VM or write its config now, so nothing is changed",
            )
        if self.hastate in HA_HANDS_OFF:
            raise SafetyRefusal(vmid, f"HA has VM {vmid} in state '{self.hastate}': not touched")
        if self.ha_managed and action in HA_QUEUED:
            raise SafetyRefusal(
                vmid,
                f"VM {vmid} is HA-managed (HA state '{self.hastate}'): {action} would only "
                "queue a request to the HA manager",
            )
        if not self.ha_managed and action in HA_REQUESTS:
            raise SafetyRefusal(vmid, f"VM {vmid} is not HA-managed (any more): no {action}")
        if action == "ha stop" and self.hastate != "started":  # our start would override it
            raise SafetyRefusal(
                vmid,
                f"HA is asked to keep VM {vmid} '{self.hastate}', not 'started': a restart "
                "through HA would undo that request",
            )
        if self.lock and action in HA_REQUESTS:  # HA cannot be asked to skip a lock
            raise SafetyRefusal(
                vmid, f"VM is locked ({self.lock}) on {self.node}: HA would not act on it"
            )
        if self.lock and not skiplock:
            raise SafetyRefusal(
                vmid, f"VM is locked ({self.lock}) on {self.node} (use --skiplock to override)"
            )
        age = time.monotonic() - self.at
        if action not in STARTS and age > MAX_PROOF_AGE:
            raise SafetyRefusal(vmid, f"the binding proof is {age:.0f} s old; prove it again")


def _mint(**fields: Any) -> Proof:
    token = _minting.set(True)
    try:
        return Proof(**fields, at=time.monotonic())
    finally:
        _minting.reset(token)


def prove_running(
    qm: QmView,
    node: str,
    guest: GuestView | Exception,
    agent_required: bool = True,
    pve_node: str | None = None,
) -> Proof:
    """Prove that VM `qm.vmid` on `node` is running and is the guest SSH reaches.

    The binding: the NIC MACs in `qm config` are the guest's own, and, when the agent is enabled
    in the running VM, the host name the agent reports is the one SSH reports. The guest's host
    key must have been verified on this run's connection. `guest` is the exception raised when
    the guest could not be reached. With `agent_required=False` (a change inside the guest, such
    as installing the agent), an agent that does not answer leaves the binding to the MACs.
    Raises SafetyRefusal with the reason.
    """
    vmid = qm.vmid
    where = _locate(qm, node, pve_node or node)
    status, config, running_config = _ask(qm, node)
    if status.status != "running":
        raise SafetyRefusal(vmid, f"VM {vmid} on {node} is {status.status}, expected running")
    if isinstance(guest, Exception):
        raise SafetyRefusal(vmid, f"the guest cannot be reached over SSH: {one_line(guest)}")
    try:
        host_key = guest.host_key()
        seen = guest.macs()
        ssh_hostname = guest.hostname()
    except PvepatchError as exc:
        raise SafetyRefusal(vmid, f"cannot read the guest's identity: {one_line(exc)}") from exc
    if not host_key:
        raise SafetyRefusal(vmid, "the guest's SSH host key was not verified on this connection")
    configured = net_macs(config)
    shared = configured & seen
    if not shared:
        raise SafetyRefusal(
            vmid,
            f"wrong binding: VM {vmid} on {node} has NIC MAC(s) {sorted(configured)}, but the "
            f"guest reached over SSH has {sorted(seen)}",
        )
    agent_hostname: str | None = None
    binding = f"MAC {', '.join(sorted(shared))}"
    if agent_enabled(running_config):
        try:
            agent_hostname = _agent_hostname(qm, node)
        except SafetyRefusal:
            if agent_required:
                raise
            binding += " only (the agent is enabled but does not answer)"
    else:
        binding += " only (the agent is not enabled in the running VM yet)"
    if agent_hostname is not None:
        if agent_hostname != ssh_hostname:
            raise SafetyRefusal(
                vmid,
                f"wrong binding: the guest agent of VM {vmid} on {node} reports host name "
                f"'{agent_hostname}', but SSH reaches '{ssh_hostname}'",
            )
        binding += f" and agent host name '{agent_hostname}'"
    return _mint(
        vmid=vmid,
        node=node,
        status=status.status,
        pid=status.pid,
        lock=config.get("lock"),
        macs=tuple(sorted(shared)),
        ssh_hostname=ssh_hostname,
        agent_hostname=agent_hostname,
        host_key=host_key,
        binding=binding,
        **where,
    )


def prove_stopped_by_us(qm: QmView, node: str, before: Proof, pve_node: str | None = None) -> Proof:
    """Prove that the VM this run shut down (proven by `before`) is stopped now, for `qm start`.

    The guest cannot answer while stopped: the binding is the one proven right before this run
    took it down, and only the VM of that proof may be started.
    """
    if before.vmid != qm.vmid:
        raise SafetyRefusal(qm.vmid, f"VM {qm.vmid} was not taken down by this run")
    where = _locate(qm, node, pve_node or node)
    status, config, _ = _ask(qm, node, running=False)
    if status.status != "stopped":
        raise SafetyRefusal(qm.vmid, f"VM {qm.vmid} on {node} is {status.status}, expected stopped")
    return _after(before, status, config, "proven before this run shut it down", where)


def prove_same_process(qm: QmView, node: str, before: Proof, pve_node: str | None = None) -> Proof:
    """Prove that the VM is still the QEMU process `before` proved (same pid, still running),
    for a power-off after its clean shutdown failed: the guest may no longer answer SSH."""
    where = _locate(qm, node, pve_node or node)
    status, config, _ = _ask(qm, node, running=False)
    if status.status != "running" or status.pid is None or status.pid != before.pid:
        raise SafetyRefusal(
            qm.vmid,
            f"VM {qm.vmid} on {node} is no longer the process proven before the shutdown "
            f"(was pid {before.pid}, now {status.status} pid {status.pid})",
        )
    return _after(before, status, config, f"same QEMU pid {status.pid} as proven before", where)


def prove_holds_our_snapshot(
    qm: SnapshotView, node: str, before: Proof, snapshot: str, pve_node: str | None = None
) -> Proof:
    """Prove, for `qm rollback`, that the VM is the one this run snapshotted: the proof made
    right before the snapshot (`before`) was for this VM, the VM still has the NIC MACs proven
    then, and it holds the snapshot this run made (a unique name). Running or stopped: a VM
    whose update broke it may no longer answer over SSH or through its agent."""
    if before.vmid != qm.vmid:
        raise SafetyRefusal(qm.vmid, f"VM {qm.vmid} was not snapshotted by this run")
    where = _locate(qm, node, pve_node or node)
    status, config, _ = _ask(qm, node, running=False)
    try:
        names = [s.name for s in qm.snapshots()]
    except PvepatchError as exc:
        raise SafetyRefusal(
            qm.vmid,
            f"Proxmox host {node} did not list the snapshots of VM {qm.vmid}: {one_line(exc)}",
        ) from exc
    if snapshot not in names:
        raise SafetyRefusal(
            qm.vmid,
            f"VM {qm.vmid} on {node} has no snapshot '{snapshot}' (it has: "
            f"{', '.join(names) or 'none'})",
        )
    missing = set(before.macs) - net_macs(config)
    if missing:
        raise SafetyRefusal(
            qm.vmid,
            f"VM {qm.vmid} on {node} no longer has the NIC MAC(s) {sorted(missing)} "
            "proven before its snapshot",
        )
    return _after(before, status, config, f"holds this run's snapshot '{snapshot}'", where)


def _after(
    before: Proof, status: RunStatus, config: dict[str, str], how: str, where: dict[str, Any]
) -> Proof:
    return _mint(
        vmid=before.vmid,
        node=before.node,
        status=status.status,
        pid=status.pid,
        lock=config.get("lock"),
        macs=before.macs,
        ssh_hostname=before.ssh_hostname,
        agent_hostname=before.agent_hostname,
        host_key=before.host_key,
        binding=f"{before.binding}; {how}",
        **where,
    )


def locate(qm: QmView, node: str, pve_node: str) -> VMResource:
    """Where the cluster says VM `qm.vmid` is (`pvesh get /cluster/resources`, answered by any
    node for the whole cluster). Raise SafetyRefusal unless it is on `pve_node`, the node of
    its inventory `proxmox_host` `node`: a VM that moved is refused, never followed."""
    try:
        where = qm.resource()
    except PvepatchError as exc:
        raise SafetyRefusal(
            qm.vmid, f"Proxmox host {node} did not list the cluster's VMs: {one_line(exc)}"
        ) from exc
    problem = misplaced(where, qm.vmid, node, pve_node)
    if problem or where is None:
        raise SafetyRefusal(qm.vmid, problem or "not listed")
    return where


def misplaced(where: VMResource | None, vmid: int, node: str, pve_node: str) -> str | None:
    """Why VM `vmid` is not where its inventory binds it, or None when it is there."""
    if where is None:
        return f"no VM {vmid} in the cluster of {node} (pvesh get /cluster/resources)"
    if where.node != pve_node:
        return (
            f"VM {vmid} is on node '{where.node}', not on '{pve_node}' (its inventory "
            f"proxmox_host {node}): it was migrated; pvepatch does not follow it. Bind it to "
            "the node it is on in the inventory, or migrate it back"
        )
    return None


def _locate(qm: QmView, node: str, pve_node: str) -> dict[str, Any]:
    """The proof's cluster facts: on its node (`locate`), its HA state, and quorum."""
    where = locate(qm, node, pve_node)
    try:
        quorum = qm.quorum()
    except PvepatchError as exc:
        raise SafetyRefusal(
            qm.vmid, f"Proxmox host {node} did not say whether it has quorum: {one_line(exc)}"
        ) from exc
    return {"hastate": where.hastate, "ha_managed": where.ha_managed, "quorate": quorum.quorate}


def _ask(
    qm: QmView, node: str, running: bool = True
) -> tuple[RunStatus, dict[str, str], dict[str, str]]:
    try:
        status = qm.run_status()
        config = qm.config()
        current = qm.config(current=True) if running else config
    except PvepatchError as exc:
        raise SafetyRefusal(
            qm.vmid, f"Proxmox host {node} did not answer for VM {qm.vmid}: {one_line(exc)}"
        ) from exc
    return status, config, current


def _agent_hostname(qm: QmView, node: str) -> str:
    try:
        return qm.agent_host_name()
    except PvepatchError as exc:
        raise SafetyRefusal(
            qm.vmid,
            f"the guest agent of VM {qm.vmid} on {node} does not answer, so the binding cannot "
            f"be proven: {one_line(exc)}",
        ) from exc
