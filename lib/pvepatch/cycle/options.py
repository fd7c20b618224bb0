"""The run's options as the actions see them, and the fleet's shared state (who is down)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pvepatch.cycle.runstate import RunState
from pvepatch.cycle.slots import Slot

REBOOT_POLICIES = ("always", "if-required", "never")


@dataclass(frozen=True)
class Options:
    """The run's safety and timing options (from the command line)."""

    restart_method: str = "shutdown"
    skiplock: bool = False
    hard_stop_fallback: bool = False
    shutdown_timeout: int = 180
    stop_timeout: int = 60
    boot_timeout: float = 600.0
    restart_pause: float = 0.0
    lock_timeout: int = 600  # apt's lock
    command_timeout: float = 1800.0
    min_free_root_mb: int = 500
    min_free_boot_mb: int = 100
    max_down: int = 1
    slot_timeout: float = 3600.0  # --lock-timeout: how long a VM waits for a down slot
    reboot: str = "always"
    canary: int = 0
    max_fail: int = 0
    snapshot: bool = False  # --snapshot: a snapshot before each VM's update
    rollback_on_failure: bool = False
    snapshot_keep: int = 1  # pvepatch's own snapshots kept per VM after a good update
    snapshot_max_age: float = 14 * 86400.0  # -m verify warns about older ones (seconds)
    apply_pending: bool = False  # restart even with pending config changes pvepatch did not make
    max_backup_age: float | None = None  # refuse a VM whose newest backup is older (seconds)


@dataclass
class Fleet:
    """The run's shared state: which VMs it has taken down and not brought back, the down
    slots they hold (released when healthy, else held until the run ends), the run state."""

    runstate: RunState | None = None
    down: dict[str, str] = field(default_factory=dict)
    held: dict[str, list[Slot]] = field(default_factory=dict)
    vm_locks: dict[str, Slot] = field(default_factory=dict)  # the VMs this run may change

    def others_down(self, name: str) -> dict[str, str]:
        return {n: why for n, why in self.down.items() if n != name}

    def stop_reason(self) -> str | None:
        return self.runstate.stop_reason() if self.runstate else None

    def release_all(self) -> None:
        """The end of the run: every slot still held goes (a VM left down is reported)."""
        for slots in self.held.values():
            for slot in reversed(slots):
                slot.release()
        self.held.clear()
        for lock in self.vm_locks.values():
            lock.release()
        self.vm_locks.clear()
