"""A guest that runs detached commands as systemd units would, step by step, for unit tests.

It answers the finished command lines pvepatch sends (a Connection): the systemd-run start,
the polls (waiting nothing: each poll lets the unit write its next piece of output), and fails
polls on demand as a dropped connection does.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from pvepatch.errors import TransportError
from pvepatch.transport.command import CommandResult


@dataclass
class Script:
    """What one unit does: writes `pieces` one poll at a time, then exits with `rc`."""

    pieces: list[str] = field(default_factory=lambda: ["Reading package lists...\n"])
    rc: int | None = 0  # None: the unit dies without writing its exit status (killed)
    stderr: str = ""
    endless: bool = False  # never ends (a hung dpkg)


@dataclass
class UnitState:
    script: Script
    command: str  # the command the unit runs (the part of sh -c before the redirections)
    written: bytes = b""
    step: int = 0

    @property
    def ended(self) -> bool:
        return not self.script.endless and self.step >= len(self.script.pieces)


class UnitGuest:
    """host 'vm' with systemd (or not): `scripts` are the units' behaviours, in start order."""

    host = "vm"
    host_key = "ssh-ed25519 SHA256:test"

    def __init__(self, *scripts: Script, systemd: bool = True, drop: set[int] = frozenset()):
        self.scripts = list(scripts)
        self.systemd = systemd
        self.drop = set(drop)  # the poll numbers (1, 2, ...) whose answer never comes
        self.units: dict[str, UnitState] = {}
        self.sent: list[str] = []
        self.polls = 0

    def run(self, command: str, *, timeout: float, mutating: bool) -> CommandResult:
        self.sent.append(command)
        if "systemd-run --unit=" in command:
            assert mutating, "starting a unit changes the guest"
            return self._start(command)
        assert not mutating, f"only the start changes the guest: {command}"
        assert timeout <= 15, "a poll must notice a lost connection within seconds"
        return self._poll(command)

    def _start(self, command: str) -> CommandResult:
        if not self.systemd:
            err = "pvepatch: no systemd-run in this guest (systemd is not running)\n"
            return CommandResult("vm", command, 97, "", err, 0.1, True)
        words = shlex.split(command)
        name = re.search(r"--unit=(\S+)", command).group(1)
        script = words[words.index("-c") + 1]
        assert name not in self.units, "unit names are never reused"
        self.units[name] = UnitState(self.scripts.pop(0), script.split(" >")[0])
        return CommandResult("vm", command, 0, "", "", 0.1, True)

    def _poll(self, command: str) -> CommandResult:
        name = re.match(r"u=(\S+);", command).group(1)
        offset = int(re.search(r" n=(\d+);", command).group(1))
        chunk = int(re.search(r"\$m -gt (\d+)", command).group(1))
        unit = self.units.get(name)
        self.polls += 1
        if unit is not None and not unit.ended:  # the unit goes on while we wait
            pieces = unit.script.pieces
            unit.written += pieces[unit.step % len(pieces)].encode()
            unit.step += 1
        if self.polls in self.drop:
            raise TransportError("vm", f"SSH connection lost while running {command[:40]!r}")
        if unit is None:
            return CommandResult(
                "vm", command, 0, "pvepatch-follow inactive none 0\n", "", 0, False
            )
        ended = unit.ended
        rc = unit.script.rc if ended else None
        state = "active" if not ended else "inactive" if rc == 0 else "failed"
        size = len(unit.written)
        new = unit.written[offset : offset + max(0, min(size - offset, chunk))]
        out = f"pvepatch-follow {state} {'none' if rc is None else rc} {size}\n" + new.decode(
            errors="replace"
        )
        done = rc is not None and offset + len(new) >= size
        return CommandResult("vm", command, 0, out, unit.script.stderr if done else "", 0, False)

    def close(self) -> None:
        pass
