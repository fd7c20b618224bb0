"""The run's options as the actions see them, and the fleet's shared state (who is down)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
