"""What a run did and saw, per VM: typed records filled by the actions, and the one verdict.

The actions (pvepatch.cycle.actions) write these records; the stage tests only read them, and the
audit layer serializes them. Nothing here is written from a test body.
"""

from __future__ import annotations

import base64
import dataclasses
import pickle
import time
from dataclasses import dataclass, field
from typing import Any

from pvepatch.guest.apt import AptRun
from pvepatch.inventory import Target
from pvepatch.transport.command import CommandResult


@dataclass(frozen=True)
class Identity:
    """Who the VM was at one moment: the guest's boot, its kernel, the hypervisor's process."""

    boot_id: str | None = None
    kernel: str | None = None
    qemu_pid: int | None = None
    qemu_uptime: int | None = None
    at: float = field(default_factory=time.time)
    node: str | None = None  # the PVE node the QEMU process runs on (pvesh /cluster/resources)


@dataclass(frozen=True)
class ProofNote:
    """A precondition proof made right before a mutating `qm` command (or the refusal)."""

    action: str
    binding: str
    host_key: str | None
    at: float = field(default_factory=time.time)


@dataclass
class Binding:
    """The preflight's view of the binding (read-only, recorded for the report)."""

    macs: list[str] = field(default_factory=list)
    guest_macs: list[str] = field(default_factory=list)
    ssh_hostname: str | None = None
    agent_hostname: str | None = None
    agent_answers: bool = False


@dataclass
class AgentOutcome:
    installed_before: bool = False
    installed_by_run: bool = False
    enabled_in_config_before: bool = False
    enabled_by_run: bool = False
    started_by_run: bool = False

    @property
    def deferred_to_restart(self) -> bool:
        """The port and agent can only appear after the restart applies `agent: enabled=1`."""
        return self.enabled_by_run


RESTART_STEPS = ("allowed", "stopped", "started", "ssh_back", "port_back", "agent_back")
RESTART_REQUIRES = {
    "allowed": (),
    "stopped": ("allowed",),
    "started": ("allowed", "stopped"),
    "ssh_back": ("allowed", "stopped", "started"),
    "port_back": ("allowed", "stopped", "started", "ssh_back"),
    "agent_back": ("allowed", "stopped", "started", "ssh_back"),
}


@dataclass
class RestartOutcome:
    method: str
    refused: str | None = None
    # the pending config changes the restart applied (qm pending right before the shutdown)
    pending_applied: list[str] = field(default_factory=list)
    skipped: str | None = None  # not restarted on purpose (--reboot if-required/never)
    down_slots: list[str] = field(default_factory=list)  # the down slots it held
    before: Identity | None = None
    after: Identity | None = None  # observed by the verify stage, after the VM came back
    shutdown: CommandResult | None = None
    hard_stop: CommandResult | None = None
    stopped: bool = False
    start: CommandResult | None = None
    started: bool = False
    ssh_back: bool = False
    port_back: bool = False
    agent_back: bool = False
    errors: dict[str, str] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)

    def mark(self, event: str) -> None:
        self.times[event] = time.time()

    def reason(self, *steps: str) -> str:
        for step in steps:
            if step in self.errors:
                return f"{step}: {self.errors[step]}"
        if self.refused:
            return f"refused: {self.refused}"
        return next(iter(self.errors.values()), "an earlier restart step did not complete")

    def ok(self, step: str) -> bool:
        return {
            "allowed": self.refused is None,
            "stopped": self.stopped,
            "started": self.started,
            "ssh_back": self.ssh_back,
            "port_back": self.port_back,
            "agent_back": self.agent_back,
        }[step]

    def not_reached(self, step: str) -> str | None:
        """Why `step` was never attempted (an earlier step failed), or None."""
        for earlier in RESTART_STEPS[: RESTART_STEPS.index(step)]:
            if earlier in RESTART_REQUIRES[step] and not self.ok(earlier):
                return f"not reached: restart step '{earlier}' did not complete"
        return None

    def migrated(self) -> str | None:
        """Why the QEMU process seen after the restart proves nothing about it: the VM is on
        another node than the one it was restarted on (a migration starts a new QEMU process
        there, with a new pid and uptime, without any restart). None when it stayed."""
        before, after = self.before, self.after
        if before is None or after is None or after.node == before.node:
            return None
        if after.node is None:
            return (
                f"VM is not listed in the cluster now (it was on '{before.node}' where this run "
                "restarted it): no QEMU process of it can be compared with the one before"
            )
        return (
            f"VM is on node '{after.node}' now, not on '{before.node}' where this run restarted "
            "it: it was migrated since. A QEMU process on another node is a migration, not a "
            "restart, so its pid and uptime prove nothing about this run's restart (the guest's "
            "boot id does). pvepatch does not follow it: bind it to its node in the inventory"
        )

    @property
    def downtime(self) -> float | None:
        """Seconds from the start of down_window() to healthy (else to the agent back); None
        when it was never down or neither came."""
        window = down_window(self)
        end = self.times.get("healthy", self.times.get("agent_back"))
        return end - window[0] if window is not None and end is not None else None


@dataclass
class SnapshotOutcome:
    """The snapshot taken before the VM's update (or why none was)."""

    name: str | None = None
    description: str = ""
    skipped: str | None = None  # not requested for this VM
    taken: bool = False
    error: str | None = None  # PVE's message when `qm snapshot` failed
    result: CommandResult | None = None
    seconds: float | None = None


@dataclass
class RollbackOutcome(RestartOutcome):
    """The rollback to the snapshot (a restart whose way down is `qm rollback`)."""

    snapshot: str | None = None
    why: str | None = None  # the failure that made it roll back
    rollback: CommandResult | None = None
    rolled_back: bool = False
    packages_before: dict[str, str | None] = field(default_factory=dict)  # before the update
    seconds: float | None = None  # `qm rollback` alone


@dataclass
class PruneOutcome:
    """Older pvepatch snapshots deleted after a good update (--snapshot-keep)."""

    skipped: str | None = None
    kept: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class StageFailure:
    stage: str
    order: int
    test: str
    reason: str
    update_check: bool = False  # a health check after the update failed (cycle.rollback)

    def __str__(self) -> str:
        return f"{self.stage}: {self.test}: {self.reason}"


@dataclass
class ClusterFacts:
    """Where the cluster says the VM is, and what else decides whether it may be touched:
    its HA state, quorum, pending config changes, its newest backup."""

    node: str | None = None  # the node /cluster/resources names; None: not listed
    hastate: str | None = None
    ha_managed: bool = False
    quorum: str = ""
    pending: list[str] = field(default_factory=list)  # every pending change, in words
    foreign_pending: list[str] = field(default_factory=list)  # those pvepatch did not make
    backup_checked: bool = False  # --max-backup-age asked for the backups
    newest_backup: float | None = None  # epoch seconds of the newest backup; None: none
    backup_volid: str | None = None
    cloudinit: str | None = None  # the config key of its cloud-init drive
    instance_id: str | None = None  # cloud-init's instance-id in the guest now
    next_instance_id: str | None = None  # the one its next start gives (qm cloudinit dump)
    # why it may not be patched, by kind: node, quorum, ha, pending, cloudinit, backup
    problems: dict[str, str] = field(default_factory=dict)


@dataclass
class VMRecord:
    """Everything recorded about one VM during the run."""

    target: Target
    failure: StageFailure | None = None
    completed: bool = False  # its last selected test has run (False after an interruption)
    binding: Binding | None = None
    cluster: ClusterFacts | None = None
    agent: AgentOutcome | None = None
    apt: AptRun | None = None
    restart: RestartOutcome | None = None
    snapshot: SnapshotOutcome | None = None
    rollback: RollbackOutcome | None = None
    pruned: PruneOutcome | None = None
    snapshots: list[tuple[str, float | None]] = field(default_factory=list)  # seen: name, age
    proofs: list[ProofNote] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # visible skips, e.g. no blocked name to test
    qm_commands: list[CommandResult] = field(default_factory=list)
    guest_commands: list[CommandResult] = field(default_factory=list)
    outcomes: dict[str, Any] = field(default_factory=dict)
    update_began: bool = False  # dist-upgrade was about to change the guest
    packages_before_update: dict[str, str] | None = None  # installed right before the update
    not_started: str | None = None  # halted, interrupted or a canary failed before it began

    def once(self, key: str, action: Any) -> Any:
        """Run `action()` the first time `key` is asked for; remember its value or error."""
        if key not in self.outcomes:
            try:
                self.outcomes[key] = ("ok", action())
            except Exception as exc:
                self.outcomes[key] = ("error", exc)
        kind, value = self.outcomes[key]
        if kind == "error":
            raise value
        return value

    def fail(
        self, stage: str, order: int, test: str, reason: str, update_check: bool = False
    ) -> None:
        """Record the VM's first failure; later stages of this VM are skipped."""
        if self.failure is None:
            self.failure = StageFailure(stage, order, test, reason, update_check)


def verdict(record: VMRecord | None, left_down: str | None = None) -> tuple[str, str]:
    """The VM's verdict and its one-line reason: the one the terminal summary, the HTML report,
    the ledger and JUnit all show. `left_down`: why this run left the VM not running."""
    if left_down:
        return "left down", left_down
    if record is None:
        return "not run", ""
    if record.failure is not None:
        rollback = record.rollback
        if rollback is not None and rollback.rolled_back and "healthy" in rollback.times:
            return "rolled back", (
                f"{record.failure}; rolled back to snapshot {rollback.snapshot}, healthy again"
            )
        if rollback is not None and rollback.rolled_back:
            return "failed", (
                f"{record.failure}; rolled back to snapshot {rollback.snapshot}, but "
                f"{rollback.reason('ssh_back', 'port_back', 'agent_back', 'dns_back')}"
            )
        return "failed", str(record.failure)
    if record.not_started:
        return "not started", record.not_started
    if not record.completed:
        return "interrupted", "its stages did not all run"
    return "passed", ""


def record_to_wire(record: VMRecord) -> str:
    """The record as text that travels on a test report from an xdist worker to the controller.

    A pickle, not a to_dict/from_dict pair: the record nests types owned by other layers
    (CommandResult, AptRun, Target) that grow fields, and a pickle round-trips every one of them
    exactly, with nothing to keep in step. It goes only from a worker to the controller that
    spawned it (execnet already runs the controller's code in the worker). `outcomes` (cached
    values and exceptions of the actions) stays behind: it is the worker's working memory.
    """
    shipped = dataclasses.replace(record, outcomes={})
    return base64.b64encode(pickle.dumps(shipped, pickle.HIGHEST_PROTOCOL)).decode("ascii")


def record_from_wire(text: str, target: Target) -> VMRecord:
    """The record a worker shipped (record_to_wire), bound to the controller's own `target`."""
    record = pickle.loads(base64.b64decode(text))
    if not isinstance(record, VMRecord) or record.target.name != target.name:
        raise ValueError(f"not a pvepatch record of VM {target.name!r}")
    return dataclasses.replace(record, target=target)


def down_window(restart: RestartOutcome | None) -> tuple[float, float] | None:
    """When the VM was down, as epoch seconds: from its down slot (`down`), else from the
    shutdown request, to healthy (`healthy`), else to the last restart mark. None: never down."""
    if restart is None:
        return None
    times = restart.times
    start = times.get("down", times.get("shutdown_sent"))
    if start is None:
        return None
    end = times.get("healthy", max(times.values()))
    return start, max(start, end)
