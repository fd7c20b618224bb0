"""Commands and their results, the Transport interface, and the read-only guard."""

from __future__ import annotations

import re
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

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def check(self, message: str | None = None) -> CommandResult:
        """Return self when the command succeeded, else raise CommandError."""
        if not self.ok:
            raise CommandError(self, message)
        return self

    def __str__(self) -> str:
        parts = [f"command: {self.command}", f"exit status: {self.rc} ({self.duration:.1f} s)"]
        for name, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            if text.strip():
                parts.append(f"{name} (tail):\n{tail(text)}")
        return "\n".join(parts)


class Transport(Protocol):
    """Runs commands on one host."""

    host: str

    def run(
        self, command: str, *args: object, timeout: float = ..., mutating: bool = False
    ) -> CommandResult: ...

    def close(self) -> None: ...


# Verbs that change a system. A command the caller declared read-only but that matches one of
# these is refused in a read-only run: the declaration is checked, not trusted.
_MUTATING_PATTERNS = [
    r"\bapt(-get)?\b.*\b(install|upgrade|dist-upgrade|full-upgrade|remove|purge|autoremove|update)\b",
    r"\bdpkg\b.*\s(-i|--install|--configure|-r|--remove|-P|--purge|--unpack)\b",
    r"\bqm\s+(start|stop|shutdown|reboot|reset|set|unlock|resume|suspend|destroy|rollback|migrate|"
    r"snapshot|guest\s+exec|agent\s+\d+\s+shutdown|guest\s+cmd\s+\d+\s+shutdown)\b",
    r"\bsystemctl\b.*\b(start|stop|restart|reload|enable|disable|mask|unmask|kill|"
    r"reboot|poweroff|halt|isolate)\b",
    r"(^|[\s;&|'\"(`])(reboot|poweroff|halt|shutdown|rm|mv|dd|mkfs\S*|tee|truncate)(\s|$)",
    r"(^|[^<>])>{1,2}\s*/(?!dev/null)",
]
_MUTATING_RE = re.compile("|".join(f"(?:{p})" for p in _MUTATING_PATTERNS))


def looks_mutating(command: str) -> bool:
    """True when `command` contains a verb that changes the system."""
    return bool(_MUTATING_RE.search(command))


@dataclass
class ReadOnlyGuard:
    """Decides whether mutating commands may be sent, and counts the ones that were."""

    allow_mutating: bool = False
    mutating_sent: int = 0
    sent: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def admit(self, host: str, command: str, mutating: bool) -> None:
        """Raise ReadOnlyViolation unless `command` may be sent now."""
        if self.allow_mutating:
            return
        if mutating or looks_mutating(command):
            raise ReadOnlyViolation(host, command)

    def record(self, host: str, command: str, mutating: bool) -> None:
        if mutating:
            with self._lock:
                self.mutating_sent += 1
                self.sent.append(f"{host}: {command}")


class GuardedTransport:
    """A Transport that asks the guard before sending anything."""

    def __init__(self, inner: Transport, guard: ReadOnlyGuard):
        self.inner = inner
        self.guard = guard
        self.host = inner.host

    def run(
        self, command: str, *args: object, timeout: float = 60.0, mutating: bool = False
    ) -> CommandResult:
        text = quote(command, *args)
        self.guard.admit(self.host, text, mutating)
        self.guard.record(self.host, text, mutating)
        sent = time.time()
        result = self.inner.run(text, timeout=timeout, mutating=mutating)
        return result if result.started is not None else replace(result, started=sent)

    def close(self) -> None:
        self.inner.close()
