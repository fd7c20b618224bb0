"""apt runs detached in the guest (a systemd unit) and is followed: output once, lost connections
re-attached, interrupts stop the following and never the unit, non-zero exits reported."""

from __future__ import annotations

import re
import shlex

import pytest
from pvepatch.errors import CommandError, NotStarted, StoppedFollowing, TransportError
from pvepatch.guest import detached
from pvepatch.guest.apt import Apt
from pvepatch.guest.detached import Detached
from pvepatch.transport.command import CommandResult, GuardedTransport, ReadOnlyGuard
from pvepatch.transport.connections import RecordingTransport
from units import Script, UnitGuest

UPGRADE = [
    "Reading package lists...\n",
    "Unpacking openssl (3.0.2-1) over (3.0.1-1) ...\n",
    "Setting up openssl (3.0.2-1) ...\n",
]


class Clock:
    """time.monotonic and time.sleep of the detached module: a poll takes FOLLOW_WAIT s."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(detached.time, "monotonic", c.monotonic)
    monkeypatch.setattr(detached.time, "sleep", c.sleep)
    monkeypatch.setattr("pvepatch.guest.apt.time.sleep", c.sleep)
    return c


def recorded(guest: UnitGuest) -> tuple[RecordingTransport, list[CommandResult]]:
    sink: list[CommandResult] = []
    return RecordingTransport(GuardedTransport(guest, ReadOnlyGuard(True)), sink), sink


def test_apt_runs_as_a_transient_unit_and_its_output_is_followed():
    guest = UnitGuest(Script(UPGRADE))
    transport, sink = recorded(guest)
    result = Apt(transport).dist_upgrade()
    start = shlex.split(guest.sent[0])
    unit = next(w for w in start if w.startswith("--unit=")).removeprefix("--unit=")
    assert re.fullmatch(r"pvepatch-apt-get-dist-upgrade-[0-9-]+-[0-9a-f]{6}", unit)
    assert "--collect" in start  # the unit is unloaded once it ended: no failed units left
    assert guest.units[unit].command.endswith("apt-get -y -q -o DPkg::Lock::Timeout=600 "
        "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold dist-upgrade")  # fmt: skip
    assert (result.rc, result.stdout, result.mutating) == (0, "".join(UPGRADE), True)
    assert guest.polls == 3  # one piece of output per poll, the exit status with the last
    assert unit in result.command
    assert sink == [result]  # one record entry for the apt call, polls are not recorded


def test_output_is_followed_by_byte_offset_without_duplication():
    pieces = ["Paramétrage de libc6 ...\n", "Dépaquetage de openssl ...\n", "fini\n"]
    guest = UnitGuest(Script(pieces * 3))
    result = Detached(GuardedTransport(guest, ReadOnlyGuard(True))).run("apt-get x", "x", 600)
    assert result.stdout == "".join(pieces * 3)


def test_a_poll_reads_at_most_a_chunk_and_the_rest_follows():
    guest = UnitGuest(Script(["a" * 25 + "\n", "b" * 7 + "\n"]))
    t = GuardedTransport(guest, ReadOnlyGuard(True))
    result = Detached(t, chunk=10).run("apt-get x", "x", 600)
    assert result.stdout == "a" * 25 + "\n" + "b" * 7 + "\n"
    assert guest.polls == 4  # 10 + 10 + 10 + 4 bytes of 34


def test_a_dropped_connection_is_re_attached_and_nothing_is_lost_or_repeated():
    guest = UnitGuest(Script(UPGRADE * 2), drop={2, 3})
    transport, sink = recorded(guest)
    attempts: list[str] = []

    def reconnect():
        attempts.append("reconnect")
        if len(attempts) == 1:
            raise TransportError("vm", "SSH connection failed: [Errno 111] Connection refused")
        return recorded(guest)[0]

    result = Apt(transport, reconnect=reconnect).dist_upgrade()
    assert result.stdout == "".join(UPGRADE * 2)  # written while the connection was down too
    assert attempts == ["reconnect", "reconnect"]
    assert [c for c in guest.sent if "systemd-run" in c] == guest.sent[:1]  # started once


def test_interrupt_stops_the_following_never_the_unit(clock):
    guest = UnitGuest(Script(UPGRADE, endless=True))
    transport, sink = recorded(guest)
    asked = []

    def should_stop():
        asked.append(1)
        return "interrupted (SIGINT)" if len(asked) > 2 else None

    with pytest.raises(StoppedFollowing) as raised:
        Apt(transport, should_stop=should_stop).dist_upgrade()
    unit = raised.value.unit
    message = str(raised.value)
    assert unit in guest.units and raised.value.reason == "interrupted (SIGINT)"
    for hint in (f"systemctl status {unit}", f"journalctl -u {unit}", f"/var/log/pvepatch/{unit}"):
        assert hint in message
    assert "NOT stopped" in message
    assert all(c.startswith(f"u={unit};") for c in guest.sent[1:])  # only polls after the start
    assert not any(re.search(r"systemctl (stop|kill)|\bkill\b", c) for c in guest.sent)
    (entry,) = sink  # the record keeps the apt call, marked as never answered
    assert not entry.answered and entry.stdout == UPGRADE[0] and "SIGINT" in entry.stderr


def test_an_interrupted_run_starts_no_apt():
    guest = UnitGuest(Script())
    with pytest.raises(NotStarted, match="apt-get update not started: interrupted"):
        Apt(
            GuardedTransport(guest, ReadOnlyGuard(True)), should_stop=lambda: "interrupted"
        ).update()
    assert guest.sent == []


def test_a_non_zero_exit_of_apt_fails_with_its_stderr():
    err = "E: Sub-process /usr/bin/dpkg returned an error code (1)\n"
    guest = UnitGuest(Script(UPGRADE, rc=100, stderr=err))
    with pytest.raises(CommandError) as raised:
        Apt(GuardedTransport(guest, ReadOnlyGuard(True))).dist_upgrade()
    result = raised.value.result
    assert (result.rc, result.stderr, result.stdout) == (100, err, "".join(UPGRADE))
    assert "apt-get dist-upgrade failed" in str(raised.value) and "exit status: 100" in str(
        raised.value
    )


def test_update_retries_while_the_lists_lock_is_held_one_unit_each():
    held = "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 812 (apt-get)\n"
    guest = UnitGuest(Script(rc=100, stderr=held), Script(rc=100, stderr=held), Script())
    result, waits = Apt(GuardedTransport(guest, ReadOnlyGuard(True))).update()
    assert result.ok and waits == 2 and len(guest.units) == 3


def test_update_does_not_retry_other_errors():
    err = "E: The repository 'http://x ./ Release' does not have a Release file.\n"
    guest = UnitGuest(Script(rc=100, stderr=err), Script())
    with pytest.raises(CommandError, match="apt-get update failed"):
        Apt(GuardedTransport(guest, ReadOnlyGuard(True))).update()
    assert len(guest.units) == 1


def test_a_guest_without_systemd_is_refused_before_anything_runs():
    guest = UnitGuest(systemd=False)
    transport, sink = recorded(guest)
    with pytest.raises(CommandError, match="pvepatch needs systemd in the guest"):
        Apt(transport).dist_upgrade()
    assert len(guest.sent) == 1 and sink[0].rc == 97 and guest.polls == 0


def test_a_unit_that_dies_without_an_exit_status_fails():
    guest = UnitGuest(Script(UPGRADE[:1], rc=None))
    with pytest.raises(CommandError) as raised:
        Apt(GuardedTransport(guest, ReadOnlyGuard(True))).dist_upgrade()
    assert raised.value.result.rc == -1 and "left no exit status" in raised.value.result.stderr


def test_a_unit_still_running_at_the_timeout_is_left_running(clock):
    guest = UnitGuest(Script(UPGRADE, endless=True))
    apt = Apt(GuardedTransport(guest, ReadOnlyGuard(True)), command_timeout=20)
    real_poll = apt.detached._poll
    apt.detached._poll = lambda unit, offset: (clock.sleep(detached.FOLLOW_WAIT), real_poll(unit, offset))[1]  # fmt: skip
    with pytest.raises(StoppedFollowing, match="still running after 20 s"):
        apt.dist_upgrade()
    assert guest.polls == 6  # 4 s a poll: the first past 20 s is not sent


def test_a_connection_that_never_comes_back_is_reported_with_the_unit(clock):
    guest = UnitGuest(Script(UPGRADE), drop=set(range(1, 1000)))

    def unreachable():
        clock.sleep(5)  # a connect attempt that times out
        raise TransportError("vm", "SSH connection failed: timed out")

    apt = Apt(
        GuardedTransport(guest, ReadOnlyGuard(True)), command_timeout=60, reconnect=unreachable
    )
    with pytest.raises(
        StoppedFollowing, match="no answer from the guest since: vm: SSH connection"
    ):
        apt.dist_upgrade()


def test_a_refused_poll_stops_the_following():
    class NoSudo(UnitGuest):
        def _poll(self, command):
            return CommandResult("vm", command, 1, "", "sudo: a password is required\n", 0, False)

    with pytest.raises(StoppedFollowing, match="cannot read its state"):
        Detached(GuardedTransport(NoSudo(Script()), ReadOnlyGuard(True))).run("x", "x", 60)


def test_unit_and_file_names_hold_nothing_of_the_inventory_but_safe_characters():
    guest = UnitGuest(Script())
    t = GuardedTransport(guest, ReadOnlyGuard(True))
    Detached(t, run_id="Run 42; rm -rf / $(reboot)").run("apt-get x", "apt-get x", 60)
    (name,) = guest.units
    assert re.fullmatch(r"pvepatch-apt-get-x-run-42-rm-rf-reboot-[0-9a-f]{6}", name)


def test_a_read_only_run_refuses_the_start():
    guest = UnitGuest(Script())
    with pytest.raises(Exception, match="refused mutating command"):
        Apt(GuardedTransport(guest, ReadOnlyGuard(False))).dist_upgrade()
    assert guest.sent == []
