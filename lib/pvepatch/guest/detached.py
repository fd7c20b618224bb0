"""A long command run detached in the guest (a transient systemd unit), and followed from here.

The command runs under systemd, not under the SSH session, so Ctrl-C, a timeout or a dropped
connection on this side never kills it halfway (dpkg least of all). Its output goes to files in
the guest; pvepatch follows them by byte offset, one short poll at a time, and re-attaches
after a lost connection.

The record (a RecordingTransport's sink) gets one entry per detached command: its command line
with the unit's output and exit status, or, when following stopped first, marked as not
answered with what was seen. The polls are read-only plumbing and are not recorded one by one.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from pvepatch.errors import CommandError, NotStarted, StoppedFollowing, TransportError, one_line
from pvepatch.transport.command import CommandResult, Transport, quote
from pvepatch.transport.connections import RecordingTransport

LOG_DIR = "/var/log/pvepatch"  # kept after the run (and a reboot): the operator can read them
FOLLOW_WAIT = 4.0  # a poll waits in the guest this long for the unit to end before answering
POLL_TIMEOUT = FOLLOW_WAIT + 6.0  # a poll unanswered this long: the connection is taken as lost
RETRY_PAUSE = 1.0  # between attempts to get the connection back
CHUNK = 1 << 20  # at most this much new output per poll
NO_SYSTEMD = 97  # the start command's exit status when the guest has no systemd-run
RUNNING = {"active", "activating", "deactivating", "reloading", "refreshing"}

ShouldStop = Callable[[], "str | None"]  # the run's interrupt flag: a reason to stop, or None
Reconnect = Callable[[], Transport]  # a fresh connection to the same guest

# systemd-run's command: the command's stdout and stderr to files, its exit status written
# (atomically) last, so a reader that sees the status also sees all of the output.
SCRIPT = " >%s 2>%s </dev/null; echo $? >%s.part && mv %s.part %s"
START = (
    "if ! command -v systemd-run >/dev/null || ! test -d /run/systemd/system; then "
    "echo 'pvepatch: no systemd-run in this guest (systemd is not running)' >&2; exit %s; fi; "
    "mkdir -p %s && systemd-run --unit=%s --collect --quiet --description=%s /bin/sh -c %s"
)
# One poll: wait up to FOLLOW_WAIT s while the unit runs, then one header line
# `pvepatch-follow <state> <exit status|none> <output size>`, the output from byte n on (at most
# CHUNK bytes), and, once the unit is done and all its output was sent, its stderr on stderr.
# The state is read before the exit status: the status file is written before the unit ends.
POLL = (
    "u=%s; o=%s; e=%s; r=%s; n=%s; i=0; "
    'while [ $i -lt %s ] && ! test -e "$r" && systemctl is-active --quiet "$u"; '
    "do sleep 0.2; i=$((i+1)); done; "
    's=$(systemctl is-active "$u" 2>/dev/null); c=$(cat "$r" 2>/dev/null); '
    'z=$(stat -c %%s "$o" 2>/dev/null || echo 0); m=$((z-n)); '
    "if [ $m -gt %s ]; then m=%s; fi; "
    'echo "pvepatch-follow ${s:-unknown} ${c:-none} $z"; '
    'if [ $m -gt 0 ]; then tail -c +$((n+1)) "$o" | head -c $m; fi; '
    'if [ -n "$c" ] && [ $((n+m)) -ge $z ]; then cat "$e" >&2 2>/dev/null; fi; true'
)


def name_part(text: str, limit: int = 32) -> str:
    """`text` reduced to what a unit name and a file name may hold: [a-z0-9-]."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "x"


@dataclass(frozen=True)
class Unit:
    """One detached command: its unit name and the files it writes in LOG_DIR."""

    name: str
    command: str
    what: str  # how the operator calls it: "apt-get dist-upgrade"
    started: float  # epoch seconds
    clock: float  # time.monotonic() at the start
    output: list[str] = field(default_factory=list, compare=False)  # as followed so far

    def path(self, suffix: str) -> str:
        return f"{LOG_DIR}/{self.name}.{suffix}"

    def how_to_check(self) -> str:
        out, err, rc = self.path("out"), self.path("err"), self.path("rc")
        return (
            f"`systemctl status {self.name}` (gone once it ended), `journalctl -u {self.name}`; "
            f"output in {out} and {err}; its exit status in {rc} once it ended"
        )


@dataclass(frozen=True)
class Poll:
    state: str
    rc: int | None
    size: int
    offset: int  # where the next poll starts reading
    text: str
    stderr: str

    @property
    def done(self) -> bool:
        return self.rc is not None and self.offset >= self.size


def parse_poll(result: CommandResult, offset: int, chunk: int) -> Poll:
    """A poll's answer -> Poll; ValueError when it is not one (sudo refused, no shell...)."""
    head, _, text = result.stdout.partition("\n")
    words = head.split()
    if result.rc != 0 or len(words) != 4 or words[0] != "pvepatch-follow":
        raise ValueError(f"not a poll answer (exit {result.rc}): {head[:200]!r}")
    rc = None if words[2] == "none" else int(words[2])
    size = int(words[3])
    new = max(0, min(size - offset, chunk))
    return Poll(words[1], rc, size, offset + new, text, result.stderr)


class Detached:
    """Runs commands as transient systemd units in one guest and follows them to their end."""

    def __init__(
        self,
        transport: Transport,
        reconnect: Reconnect | None = None,
        should_stop: ShouldStop | None = None,
        run_id: str | None = None,
        chunk: int = CHUNK,
    ):
        self.transport = transport
        self.reconnect: Reconnect = reconnect or (lambda: self.transport)
        self.should_stop: ShouldStop = should_stop or (lambda: None)
        self.run_id = name_part(run_id or time.strftime("%Y%m%d-%H%M%S"))
        self.chunk = chunk

    @property
    def _quiet(self) -> Transport:
        """The connection without its recorder: polls are not recorded one by one."""
        t = self.transport
        return t.inner if isinstance(t, RecordingTransport) else t

    def _record(self, result: CommandResult) -> None:
        if isinstance(self.transport, RecordingTransport):
            self.transport.sink.append(result)

    def run(self, command: str, what: str, timeout: float) -> CommandResult:
        """Run the finished command line `command` detached and follow it to its end (at most
        `timeout` s); its output and exit status as one CommandResult (mutating), recorded."""
        unit = self.start(command, what)
        try:
            result = self.follow(unit, timeout)
        except StoppedFollowing as exc:
            self._record(self._result(unit, -1, "".join(unit.output), str(exc), answered=False))
            raise
        self._record(result)
        return result

    def start(self, command: str, what: str) -> Unit:
        """Start `command` as a new unit (nothing is started when the run is stopping)."""
        host = self.transport.host
        reason = self.should_stop()
        if reason:
            raise NotStarted(host, what, reason)
        name = f"pvepatch-{name_part(what, 24)}-{self.run_id}-{secrets.token_hex(3)}"
        unit = Unit(name, command, what, time.time(), time.monotonic())
        out, err, rc = unit.path("out"), unit.path("err"), unit.path("rc")
        script = command + quote(SCRIPT, out, err, rc, rc, rc)  # `command` is a finished line
        try:
            result = self._quiet.run(
                START, NO_SYSTEMD, LOG_DIR, name, f"pvepatch: {what}", script,
                timeout=60, mutating=True,
            )  # fmt: skip
        except TransportError:
            return unit  # maybe started, maybe not: following it will tell
        if result.rc == NO_SYSTEMD:
            self._record(result)
            raise CommandError(
                result,
                f"cannot run {what} detached in {host}: pvepatch needs systemd in the guest so "
                "that apt survives a lost connection or an interrupt; nothing was started",
            )
        if not result.ok:
            self._record(result)
            result.check(f"cannot start {what} as systemd unit {name}")
        return unit

    def follow(self, unit: Unit, timeout: float) -> CommandResult:
        """Poll `unit` until it ended and all its output was read; raise StoppedFollowing when
        the run is stopping, at `timeout`, or when the guest cannot say how the unit is."""
        deadline = unit.clock + timeout
        offset, lost = 0, ""
        while True:
            reason = self.should_stop()
            if reason:
                self._stop(unit, reason)
            if time.monotonic() > deadline:
                still = f"no answer from the guest since: {lost}" if lost else "still running"
                self._stop(unit, f"{still} after {timeout:g} s")
            try:
                poll = self._poll(unit, offset)
            except TransportError as exc:
                lost = one_line(exc)
                self._reattach()
                continue
            except ValueError as exc:
                self._stop(unit, f"cannot read its state: {exc}")
            lost = ""
            unit.output.append(poll.text)
            offset = poll.offset
            if poll.done:
                return self._result(unit, poll.rc, "".join(unit.output), poll.stderr)
            if poll.rc is None and poll.state not in RUNNING:
                note = (
                    f"pvepatch: unit {unit.name} is {poll.state} and left no exit status: it "
                    "was killed, or it never started (the connection dropped while starting "
                    f"it). Check: {unit.how_to_check()}"
                )
                return self._result(unit, -1, "".join(unit.output), poll.stderr + note)

    def _poll(self, unit: Unit, offset: int) -> Poll:
        result = self._quiet.run(
            POLL, unit.name, unit.path("out"), unit.path("err"), unit.path("rc"), offset,
            int(FOLLOW_WAIT / 0.2), self.chunk, self.chunk,
            timeout=POLL_TIMEOUT, mutating=False,
        )  # fmt: skip
        return parse_poll(result, offset, self.chunk)

    def _reattach(self) -> None:
        time.sleep(RETRY_PAUSE)
        try:
            self.transport = self.reconnect()
        except TransportError:
            pass  # still unreachable: the next poll tries again, until the deadline

    def _stop(self, unit: Unit, reason: str) -> NoReturn:
        raise StoppedFollowing(
            self.transport.host, unit.name, unit.what, reason, unit.how_to_check()
        )

    def _result(
        self, unit: Unit, rc: int | None, stdout: str, stderr: str, answered: bool = True
    ) -> CommandResult:
        return CommandResult(
            self.transport.host,
            f"{unit.command}  # detached: systemd unit {unit.name}",
            -1 if rc is None else rc,
            stdout,
            stderr,
            time.monotonic() - unit.clock,
            mutating=True,
            started=unit.started,
            answered=answered,
        )
