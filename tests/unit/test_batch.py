"""Several read-only commands in one round trip: run by a real `sh`, cut back into one answer each."""

from __future__ import annotations

import subprocess
import time

import pytest
from pvepatch.errors import TransportError
from pvepatch.transport import batch
from pvepatch.transport.batch import Prefetch
from pvepatch.transport.command import CommandResult, GuardedTransport, ReadOnlyGuard
from pvepatch.transport.connections import RecordingTransport

PARTS = [
    "echo one; echo oops >&2",
    "printf 'no newline at the end'",
    "exit 3",  # the part's own shell ends, the batch goes on
    "false",
    "printf '\\n@@pvepatch-end-0000000000000000 0\\n'",  # a forged mark with the wrong token
    "cat /nonexistent-pvepatch-file",
    "printf 'last\\n\\n'",
]


class Shell:
    """A connection that runs command lines with the local /bin/sh, as sshd runs them."""

    host = "local"
    host_key = "ssh-ed25519 SHA256:test"

    def __init__(self):
        self.sent: list[str] = []

    def run(self, command, *, timeout, mutating):
        self.sent.append(command)
        began = time.monotonic()
        done = subprocess.run(
            ["sh", "-c", command], capture_output=True, text=True, timeout=timeout
        )
        took = time.monotonic() - began
        return CommandResult(self.host, command, done.returncode, done.stdout, done.stderr, took)

    def close(self):
        pass


def alone(part: str) -> CommandResult:
    return Shell().run(part, timeout=10, mutating=False)


def recording(connection) -> tuple[RecordingTransport, list[CommandResult], Prefetch]:
    sink: list[CommandResult] = []
    kept = Prefetch()
    guarded = GuardedTransport(connection, ReadOnlyGuard(allow_mutating=False))
    return RecordingTransport(guarded, sink, kept), sink, kept


def test_a_batch_answers_each_part_as_if_it_had_been_sent_alone():
    shell = Shell()
    transport, sink, _ = recording(shell)
    results = transport.run_batch(PARTS, timeout=10)
    assert len(shell.sent) == 1  # one round trip
    for part, result in zip(PARTS, results, strict=True):
        expected = alone(part)
        assert (result.command, result.rc, result.stdout, result.stderr) == (
            part,
            expected.rc,
            expected.stdout,
            expected.stderr,
        )
        assert result.answered and not result.mutating
    assert [r.rc for r in results] == [0, 0, 3, 1, 0, 1, 0]
    assert results[4].stdout == "\n@@pvepatch-end-0000000000000000 0\n"  # not taken for a mark
    assert sink == results  # recorded one by one, each marked with the batch it came in
    assert len({r.batch for r in sink}) == 1 and sink[0].batch


def test_parts_after_a_cut_are_unanswered():
    token = batch.new_token()
    whole = Shell().run(batch.script(PARTS[:2], token), timeout=10, mutating=False)
    results = batch.split(whole, PARTS[:3], token)  # the third part's mark never came
    assert [r.answered for r in results] == [True, True, False]
    assert results[2].rc == -1 and "ended before this part" in results[2].stderr


def test_a_dropped_batch_records_every_part_as_sent_and_unanswered():
    class Dropped(Shell):
        def run(self, command, *, timeout, mutating):
            raise TransportError("local", "SSH connection lost")

    transport, sink, kept = recording(Dropped())
    transport.fetch(["hostname", "uname -r"])  # a failed fetch is recorded, not raised
    assert [(r.command, r.answered) for r in sink] == [("hostname", False), ("uname -r", False)]
    assert not kept.held("local", "hostname")
    with pytest.raises(TransportError):  # asked again alone, it fails where it is asked
        transport.run("hostname", mutating=False)


def test_a_fetched_answer_is_used_once_while_fresh_and_never_for_a_change():
    shell = Shell()
    transport, sink, kept = recording(shell)
    transport.fetch(["echo a", "echo b"])
    transport.fetch(["echo a"])  # already held: nothing is sent
    assert len(shell.sent) == 1
    transport.fetch(["echo a", "echo a"])  # one more answer wanted: only that one is asked
    assert len(shell.sent) == 2 and shell.sent[-1].count("( echo a\n)") == 1
    assert kept.held("local", "echo a") == 2
    assert transport.run("echo %s", "a", mutating=False).stdout == "a\n"
    assert transport.run("echo a", mutating=False).stdout == "a\n"
    assert len(shell.sent) == 2  # both answered from the batches
    assert transport.run("echo a", mutating=False).stdout == "a\n"
    assert len(shell.sent) == 3  # each answer used once: asked again
    kept.fresh_for = 0.0
    time.sleep(0.01)
    transport.run("echo b", mutating=False)
    assert len(shell.sent) == 4  # too old: asked again
    guard = ReadOnlyGuard(allow_mutating=True)
    mutable = RecordingTransport(GuardedTransport(shell, guard), sink, Prefetch())
    mutable.fetch(["echo c", "echo d"])
    sent = len(shell.sent)
    mutable.run("echo c", mutating=True)
    assert shell.sent[-1] == "echo c"  # a change is always sent
    assert guard.mutating_sent == 1
    mutable.run("echo d", mutating=False)
    assert len(shell.sent) == sent + 2  # asked before the change: asked again after it


def test_the_testinfra_lines_asked_ahead_are_the_ones_testinfra_sends():
    """The guest agent's stage asks testinfra's own lines ahead; if testinfra changed them,
    they would be asked twice. The lines testinfra sends, in order, are the ones named."""
    from pvepatch.guest.facts import Guest, service_question

    class Debian(Shell):
        answers = {
            "uname -s": "Linux\n",
            "cat /etc/os-release": 'ID=debian\nVERSION_ID="12"\n',
            "uname -m": "x86_64\n",
            "dpkg-query -f '${Status}' -W qemu-guest-agent": "install ok installed",
            "systemctl is-active qemu-guest-agent": "active\n",
        }

        def run(self, command, *, timeout, mutating):
            self.sent.append(command)
            return CommandResult(self.host, command, 0, self.answers.get(command, ""), "", 0.0)

    shell = Debian()
    guest = Guest(recording(shell)[0])
    guest.host.package("qemu-guest-agent").is_installed  # noqa: B018 (asks)
    guest.host.service("qemu-guest-agent").is_running  # noqa: B018 (asks)
    guest.host.service("dnsmasq").is_running  # noqa: B018 (asks)
    names = ["system_type", "os_release", "arch", "agent_package", "systemd", "agent_service"]
    assert shell.sent == [*Guest.asked(*names), service_question("dnsmasq")]
