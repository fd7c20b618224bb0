"""Commands and their results, the Transport interface, and the read-only guard."""

from __future__ import annotations

import shlex
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Protocol

from pvepatch.errors import CommandError, ReadOnlyViolation

TAIL_LINES = 15


def quote(command: str, *args: object) -> str:
    """Fill `%s` placeholders in `command` with shell-quoted `args` (testinfra's convention)."""
    if not args:
        return command
    return command % tuple(shlex.quote(str(a)) for a in args)


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of `text`."""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


@dataclass(frozen=True)
class CommandResult:
    """What one command did on one host."""

    host: str
    command: str
    rc: int
    stdout: str
    stderr: str
    duration: float
    mutating: bool = False
    started: float | None = None  # epoch seconds when it was sent (set by GuardedTransport)
    answered: bool = True  # False: sent, but no answer came (connection lost, timed out)
    batch: str | None = None  # sent in one round trip with the other commands of this batch

    @classmethod
    def no_answer(
        cls, host: str, command: str, error: Exception, duration: float, mutating: bool, sent: float
    ) -> CommandResult:
        """A command that was sent and never answered: rc -1, the error as its stderr."""
        return cls(host, command, -1, "", str(error), duration, mutating, sent, answered=False)

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def check(self, message: str | None = None) -> CommandResult:
        """Return self when the command succeeded, else raise CommandError."""
        if not self.ok:
            raise CommandError(self, message)
        return self

    def __str__(self) -> str:
        status = f"{self.rc}" if self.answered else "none: no answer came"
        parts = [f"command: {self.command}", f"exit status: {status} ({self.duration:.1f} s)"]
        for name, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            if text.strip():
                parts.append(f"{name} (tail):\n{tail(text)}")
        return "\n".join(parts)


class Connection(Protocol):
    """Runs finished command lines on one host (SSH, or a fake in tests)."""

    host: str
    host_key: str | None  # the host key this connection verified, "type SHA256:..."

    def run(self, command: str, *, timeout: float, mutating: bool) -> CommandResult: ...

    def close(self) -> None: ...


class Held(Protocol):
    """A command kept running while its holder keeps it (a down slot's lock)."""

    def readline(self, timeout: float) -> str | None:
        """The next line of its output; None when it ended or `timeout` passed."""
        ...

    def alive(self) -> bool:
        """It still runs: not ended, its connection not gone."""
        ...

    def close(self) -> None: ...


class Transport(Protocol):
    """What the rest of pvepatch talks to: `run("cmd %s", arg, mutating=...)`, guarded.

    Arguments are shell-quoted into the `%s` placeholders (testinfra's convention) by
    GuardedTransport, the one layer that builds command lines.
    """

    host: str
    host_key: str | None

    def run(
        self, command: str, *args: object, timeout: float = ..., mutating: bool
    ) -> CommandResult: ...

    def close(self) -> None: ...


@dataclass
class ReadOnlyGuard:
    """Admits mutating commands only in a run that patches, and counts the ones sent.

    Every command declares at the place it is built whether it changes the system
    (`mutating=True`) or only reads it; there is no default and no guessing from the text.
    """

    allow_mutating: bool = False
    mutating_sent: int = 0
    sent: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def admit(self, host: str, command: str, mutating: bool) -> None:
        """Raise ReadOnlyViolation unless `command` may be sent now; count it if it may."""
        if mutating and not self.allow_mutating:
            raise ReadOnlyViolation(host, command)
        if mutating:
            with self._lock:
                self.mutating_sent += 1
                self.sent.append(f"{host}: {command}")


class GuardedTransport:
    """The one layer that builds command lines (`quote`) and asks the guard before sending."""

    def __init__(self, inner: Connection, guard: ReadOnlyGuard):
        self.inner = inner
        self.guard = guard
        self.host = inner.host
        self.host_key = getattr(inner, "host_key", None)

    def run(
        self, command: str, *args: object, timeout: float = 60.0, mutating: bool
    ) -> CommandResult:
        text = quote(command, *args)
        self.guard.admit(self.host, text, mutating)
        sent = time.time()
        result = self.inner.run(text, timeout=timeout, mutating=mutating)
        return result if result.started is not None else replace(result, started=sent)

    def close(self) -> None:
        self.inner.close()
