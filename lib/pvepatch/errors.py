"""The exceptions pvepatch raises, each carrying the data that explains it.

PvepatchError
 +-- InventoryError          bad inventory or options: nothing was touched
 |    +-- InventoryProblems  every problem of one inventory at once (carries .problems)
 +-- TransportError          a host could not be reached or talked to
 |    +-- HostKeyError       unknown or changed SSH host key
 |    +-- CommandTimeout     a command did not finish within its timeout
 +-- CommandError           a command ran and failed (carries .result)
 |    +-- QmError            `qm` on the Proxmox host failed
 +-- WaitTimeout             a wait reached its deadline (says what it waited for)
 +-- ReadOnlyViolation       a mutating command was attempted in a read-only run
 +-- SafetyRefusal           a mutating action whose preconditions were not proven
 +-- NotStarted              an action was not started: the run is stopping (carries .reason)
 +-- StoppedFollowing        pvepatch stopped following a detached command (apt in a systemd
                             unit) that goes on in the guest: interrupt, timeout, lost host
"""

from __future__ import annotations

from typing import Protocol


class CommandResult(Protocol):
    """What an error needs of a command's result (transport.command.CommandResult has it);
    a protocol here, so errors import nothing of pvepatch."""

    @property
    def host(self) -> str: ...

    @property
    def rc(self) -> int: ...

    @property
    def stderr(self) -> str: ...


class PvepatchError(Exception):
    """Base class of every error pvepatch raises on purpose."""


class InventoryError(PvepatchError):
    """The inventory (or an option) is invalid; raised before any connection."""

    def __init__(self, path: str, message: str, host: str | None = None, field: str | None = None):
        self.path = path
        self.host = host
        self.field = field
        where = f"host '{host}': " if host else ""
        what = f"'{field}' " if field and not message.startswith(f"'{field}'") else ""
        super().__init__(f"{path}: {where}{what}{message}")


class TransportError(PvepatchError):
    """A host could not be reached, or the connection broke."""

    def __init__(self, host: str, message: str):
        self.host = host
        super().__init__(f"{host}: {message}")


class HostKeyError(TransportError):
    """The SSH host key is unknown or does not match known_hosts."""


class CommandTimeout(TransportError):
    """A command did not finish within its timeout."""

    def __init__(self, host: str, command: str, timeout: float):
        self.command = command
        self.timeout = timeout
        super().__init__(host, f"command timed out after {timeout:g} s: {command}")


class CommandError(PvepatchError):
    """A command ran and exited non-zero."""

    def __init__(self, result: CommandResult, message: str | None = None):
        self.result = result
        head = message or "command failed"
        super().__init__(f"{result.host}: {head}\n{result}")


class QmError(CommandError):
    """`qm` on the Proxmox host failed."""

    def __init__(self, result: CommandResult, vmid: int, message: str | None = None):
        self.vmid = vmid
        super().__init__(result, message or f"qm failed for VM {vmid}")


class WaitTimeout(PvepatchError):
    """A wait reached its deadline."""

    def __init__(self, what: str, timeout: float, last: str = ""):
        self.what = what
        self.timeout = timeout
        self.last = last
        tail = f" (last seen: {last})" if last else ""
        super().__init__(f"gave up waiting {timeout:g} s for {what}{tail}")


class ReadOnlyViolation(PvepatchError):
    """A mutating command was attempted while the run is read-only."""

    def __init__(self, host: str, command: str):
        self.host = host
        self.command = command
        super().__init__(
            f"{host}: refused mutating command in a read-only run "
            f"(select the patch stages with -m patch to change anything): {command}"
        )


class SafetyRefusal(PvepatchError):
    """A mutating action was refused: its preconditions could not be proven right before it."""

    def __init__(self, vmid: int, reason: str):
        self.vmid = vmid
        self.reason = reason
        super().__init__(f"refused for VM {vmid}: {reason}; nothing was sent")


class NotStarted(PvepatchError):
    """An action was not started because the run is stopping (an interrupt, say)."""

    def __init__(self, host: str, what: str, reason: str):
        self.host = host
        self.what = what
        self.reason = reason
        super().__init__(f"{host}: {what} not started: {reason}")


class StoppedFollowing(PvepatchError):
    """pvepatch stopped following a command it had started detached in the guest (a transient
    systemd unit). The command was not stopped: it runs to its end in the guest."""

    def __init__(self, host: str, unit: str, what: str, reason: str, how_to_check: str):
        self.host = host
        self.unit = unit
        self.what = what
        self.reason = reason
        super().__init__(
            f"{host}: stopped following {what} in unit {unit}: {reason}. It was NOT stopped: "
            f"it runs to its end in the guest. Check it there: {how_to_check}"
        )


class InventoryProblems(InventoryError):
    """Every problem found in one inventory, reported at once; `.problems` holds each one."""

    def __init__(self, path: str, problems: list[InventoryError], shown: int = 50):
        first = problems[0]
        self.path, self.problems = path, problems
        self.host, self.field = (first.host, first.field) if len(problems) == 1 else (None, None)
        lines = [str(p) for p in problems[:shown]]
        if len(problems) > shown:
            lines.append(f"... and {len(problems) - shown} more problem(s) not shown")
        head = [] if len(problems) == 1 else [f"{path}: {len(problems)} problems:"]
        PvepatchError.__init__(self, "\n".join(head + lines))


def one_line(what: BaseException | str) -> str:
    """The first non-empty line of an error or a text (at most 300 characters), for a summary."""
    lines = [line for line in str(what).strip().splitlines() if line.strip()]
    if not lines:
        return type(what).__name__ if isinstance(what, BaseException) else ""
    return lines[0][:300]


def last_line(text: str) -> str:
    """The last non-empty line of a command's output (where qm and apt put the error)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
