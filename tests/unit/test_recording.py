"""The record keeps every command that was sent, also one whose answer never came."""

from __future__ import annotations

import pytest
from pvepatch.errors import CommandTimeout, TransportError
from pvepatch.transport.command import CommandResult, GuardedTransport, ReadOnlyGuard
from pvepatch.transport.connections import RecordingTransport


class Dropping:
    """A connection whose answers stop after `answers` commands."""

    host = "vm"
    host_key = "ssh-ed25519 SHA256:test"

    def __init__(self, answers: int, error: Exception):
        self.answers, self.error = answers, error

    def run(self, command, *, timeout, mutating):
        if self.answers == 0:
            raise self.error
        self.answers -= 1
        return CommandResult("vm", command, 0, "ok\n", "", 0.1, mutating)

    def close(self):
        pass


def recording(answers: int, error: Exception) -> tuple[RecordingTransport, list[CommandResult]]:
    sink: list[CommandResult] = []
    guarded = GuardedTransport(Dropping(answers, error), ReadOnlyGuard(allow_mutating=True))
    return RecordingTransport(guarded, sink), sink


@pytest.mark.parametrize(
    "error",
    [
        TransportError("vm", "SSH connection lost while running 'x': Socket is closed"),
        CommandTimeout("vm", "x", 10),
    ],
)
def test_a_command_without_an_answer_is_recorded_and_the_error_raised(error):
    t, sink = recording(1, error)
    t.run("hostname", mutating=False)
    with pytest.raises(TransportError) as raised:
        t.run("systemd-run --unit=%s true", "pvepatch-apt-x; reboot", mutating=True)
    assert raised.value is error
    assert [r.answered for r in sink] == [True, False]
    lost = sink[1]
    assert lost.command == "systemd-run --unit='pvepatch-apt-x; reboot' true"  # as it was sent
    assert (lost.rc, lost.ok, lost.mutating, lost.stderr) == (-1, False, True, str(error))
    assert lost.started is not None
    assert "exit status: none: no answer came" in str(lost)


def test_a_refused_command_was_not_sent_and_is_not_recorded():
    sink: list[CommandResult] = []
    guarded = GuardedTransport(Dropping(1, OSError()), ReadOnlyGuard(allow_mutating=False))
    with pytest.raises(Exception, match="refused mutating command"):
        RecordingTransport(guarded, sink).run("qm start %s", 101, mutating=True)
    assert sink == []
