"""What every worker of one run must see at once: interrupts, failures, canaries, down slots.

One directory on the controller's machine, made by the controller (or the only process of a
serial run) and handed to pytest-xdist workers. Each fact is a file, so that workers in other
processes read it without any server: `interrupted` (why), `failed/<vm>`, `done/<vm>`
(passed/failed), and `slots/` (the run's down slots, pvepatch.cycle.slots).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import quote as _quote

from pvepatch.cycle.slots import SlotTable, local_opener

PASSED, FAILED = "passed", "failed"


@dataclass
class RunState:
    directory: Path
    max_fail: int = 0  # 0: never halt
    canaries: tuple[str, ...] = ()
    owner: bool = False  # the controller removes the directory at the end
    run_id: str = field(init=False)
    _work: IO[str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.run_id = self.directory.name.removeprefix("pvepatch-run-")
        for sub in ("failed", "done", "slots", "stuck"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)

    @classmethod
    def create(cls, max_fail: int = 0) -> RunState:
        directory = Path(tempfile.mkdtemp(prefix="pvepatch-run-"))
        (directory / "started").write_text(f"{time.time():.3f}\n")
        return cls(directory, max_fail=max_fail, owner=True)

    @property
    def started(self) -> float:
        """When the run began (the controller's clock): the same for all its workers."""
        try:
            return float((self.directory / "started").read_text())
        except (OSError, ValueError):
            return self.directory.stat().st_mtime

    def remove(self) -> None:
        if self.owner:
            shutil.rmtree(self.directory, ignore_errors=True)

    def holder(self, vm: str) -> str:
        """Who holds a slot, as other runs see it."""
        return (
            f"{vm} (run {self.run_id}, pid {os.getpid()} on {socket.gethostname()}, since "
            f"{time.strftime('%H:%M:%S')})"
        )

    # --- interrupts ------------------------------------------------------------------------
    def interrupt(self, why: str) -> bool:
        """Record the interrupt; True the first time."""
        path = self.directory / "interrupted"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(why)
        return True

    def interrupted(self) -> str | None:
        try:
            return (self.directory / "interrupted").read_text() or "interrupted"
        except OSError:
            return None

    # --- failures and halts ----------------------------------------------------------------
    def vm_failed(self, vm: str) -> None:
        (self.directory / "failed" / _name(vm)).touch()

    def failures(self) -> list[str]:
        return sorted(_unname(p.name) for p in (self.directory / "failed").iterdir())

    def halted(self) -> str | None:
        failed = self.failures()
        if self.max_fail and len(failed) >= self.max_fail:
            return f"halted after {len(failed)} failures ({', '.join(failed)})"
        return None

    def stop_reason(self) -> str | None:
        """Why no new action may start now (interrupted, halted), or None."""
        why = self.interrupted()
        return f"run interrupted ({why})" if why else self.halted()

    # --- VMs still down after their restart (they keep their slots until the run ends) ----
    def vm_stuck(self, vm: str) -> None:
        (self.directory / "stuck" / _name(vm)).touch()

    def vm_unstuck(self, vm: str) -> None:
        """It is healthy again (rolled back): it no longer holds the budget."""
        (self.directory / "stuck" / _name(vm)).unlink(missing_ok=True)

    def stuck(self) -> list[str]:
        return sorted(_unname(p.name) for p in (self.directory / "stuck").iterdir())

    # --- canaries --------------------------------------------------------------------------
    def vm_done(self, vm: str, passed: bool) -> None:
        (self.directory / "done" / _name(vm)).write_text(PASSED if passed else FAILED)

    def done(self) -> dict[str, str]:
        return {_unname(p.name): p.read_text() for p in (self.directory / "done").iterdir()}

    def canary_gate(
        self,
        vm: str,
        progress: Callable[[str], None],
        every: float = 30.0,
        interval: float = 1.0,
    ) -> str | None:
        """For a VM that is not a canary: wait until every canary finished; the reason not to
        start when one failed (or the run stopped), else None."""
        if not self.canaries or vm in self.canaries:
            return None
        said = 0.0
        while True:
            done = self.done()
            failed = [c for c in self.canaries if done.get(c) == FAILED]
            if failed:
                return f"canary {', '.join(failed)} failed"
            if all(c in done for c in self.canaries):
                return None
            why = self.stop_reason()
            if why:
                return why
            if time.monotonic() - said >= every:
                waiting = [c for c in self.canaries if c not in done]
                progress(f"{vm}: waiting for the canary VM(s) {', '.join(waiting)} to pass")
                said = time.monotonic()
            time.sleep(interval)

    # --- progress lines of xdist workers, shown by the controller ---------------------------
    def tell(self, line: str) -> None:
        """A worker's progress line, for the controller to print (one small O_APPEND write)."""
        fd = os.open(self.directory / "progress.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, (line.replace("\n", " ") + "\n").encode())
        finally:
            os.close(fd)

    def relay(self, say: Callable[[str], None], stop: threading.Event) -> None:
        """Print the workers' progress lines as they come, until `stop` is set (then the rest)."""
        offset = 0
        path = self.directory / "progress.log"
        while True:
            stopping = stop.wait(0.5)
            try:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except OSError:
                data = b""
            complete = data[: data.rfind(b"\n") + 1]
            offset += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                say(line)
            if stopping:
                return

    # --- workers: a VM left down keeps its slots until every worker is done ---------------
    def working(self) -> None:
        """This process runs tests (a shared lock, released by the kernel if it dies)."""
        self._work = (self.directory / "workers.lock").open("a")
        fcntl.flock(self._work, fcntl.LOCK_SH)

    def done_working(self, wait: bool, progress: Callable[[str], None]) -> None:
        """This process ran its tests. `wait` (it holds slots of VMs not back healthy): wait
        until no other worker of the run runs tests any more (a dead one counts as done), so
        those slots last until the run ends, not just until this worker has no more work."""
        work, self._work = self._work, None
        if work is None:
            return
        fcntl.flock(work, fcntl.LOCK_UN)
        if wait:
            try:
                fcntl.flock(work, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                progress(
                    "keeping the down slots of VMs not back healthy until every worker is done"
                )
                fcntl.flock(work, fcntl.LOCK_EX)
        work.close()

    # --- the run's own down slots ----------------------------------------------------------
    def slots(self) -> SlotTable:
        return SlotTable("this run", str(self.directory / "slots"), local_opener)

    def down_now(self) -> list[str]:
        """Who holds the run's slots now (for the interrupt message)."""
        holders = []
        for path in sorted((self.directory / "slots").glob("slot-*")):
            if path.suffix == ".who":
                continue
            with path.open("a") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    who = path.with_name(path.name + ".who")
                    holders.append(who.read_text().strip() if who.exists() else path.name)
                else:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        return holders


def _name(vm: str) -> str:
    return _quote(vm, safe="")


def _unname(name: str) -> str:
    from urllib.parse import unquote

    return unquote(name)
