"""Ctrl-C and SIGTERM in a run: the handlers, the interrupted run's end, the workers' progress relay.

The hooks are methods of the one plugin object (pvepatch.plugin.core.PvepatchPlugin mixes
InterruptHooks in); pytest_sessionfinish, which ends more than this, calls back in here.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest

from pvepatch.cycle.options import Fleet
from pvepatch.plugin.mode import PATCH, written_mode


class InterruptHooks:
    """Ctrl-C and SIGTERM stop new actions and never cut one short. Its state is the plugin's
    (_old_handlers, _relay, _relay_stop)."""

    config: pytest.Config
    fleet: Fleet
    mode: str
    _old_handlers: dict[int, Any]
    _relay: threading.Thread | None  # the controller prints its workers' progress
    _relay_stop: threading.Event
    say: Callable[[str], None]
    _print: Callable[[str], None]

    def _interrupted(self) -> str | None:
        """Why following a detached apt stops (the run was interrupted), or None."""
        runstate = self.fleet.runstate
        why = runstate.interrupted() if runstate else None
        return f"run interrupted ({why})" if why else None

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Ctrl-C and SIGTERM stop new actions and never cut one short (issue: nothing
        stranded): the handler records the interrupt for every worker and says what is in
        flight; a restart under way runs to its end. Without a run state: raise, as pytest."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)
        if self.fleet.runstate is not None and hasattr(self.config, "workerinput"):
            self.fleet.runstate.working()  # see pytest_sessionfinish
        elif self.fleet.runstate is not None and self.config.getoption("dist", "no") != "no":
            self._relay = threading.Thread(
                target=self.fleet.runstate.relay,
                args=(self._print, self._relay_stop),
                name="pvepatch: workers' progress",
                daemon=True,
            )
            self._relay.start()

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        runstate = self.fleet.runstate
        # (an xdist controller learns the mode from its workers: -m as written decides there)
        if runstate is None or PATCH not in (self.mode, written_mode(self.config)):
            raise KeyboardInterrupt(f"pvepatch: received {name}")
        first = runstate.interrupt(name)
        down = runstate.down_now()
        if first:
            self.say(
                f"{name} received: no new action starts; a restart under way is finished "
                "(shutdown to its timeout, start, checks)"
            )
        else:
            self.say(f"{name} received again: still bringing back what is down")
        self.say("down now: " + ("; ".join(down) if down else "none"))

    def _stop_relay(self) -> None:
        if self._relay is not None:
            self._relay_stop.set()
            self._relay.join(timeout=5)
            self._relay = None

    def _restore_handlers(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Any:
        """Every test ran or was skipped ("not started"): an interrupted run ends as pytest's
        interrupted runs do (exit status 2), here or on the xdist controller."""
        result = yield
        runstate = self.fleet.runstate
        why = runstate.interrupted() if runstate else None
        if why and not hasattr(self.config, "workerinput"):
            raise session.Interrupted(
                f"pvepatch: run interrupted ({why}); nothing new was started after it, what was "
                "under way was finished (see the pvepatch summary)"
            )
        return result
