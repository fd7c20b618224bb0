"""The apt command line, the package diff, and the read-only guard."""

from __future__ import annotations

import shlex

import pytest
from pvepatch.errors import ReadOnlyViolation
from pvepatch.guest.apt import Apt, apt_command, diff_packages, parse_dpkg_query
from pvepatch.transport.command import (
    CommandResult,
    GuardedTransport,
    ReadOnlyGuard,
    looks_mutating,
    quote,
)


def test_apt_command_is_fully_non_interactive():
    words = shlex.split(apt_command("dist-upgrade", lock_timeout=300))
    assert words[0] == "env"  # env inside sudo: sudoers env policy cannot drop the variables
    for var in (
        "DEBIAN_FRONTEND=noninteractive",
        "NEEDRESTART_SUSPEND=1",
        "APT_LISTCHANGES_FRONTEND=none",
        "UCF_FORCE_CONFFOLD=1",
    ):
        assert var in words
    assert words[words.index("apt-get") :] == [
        "apt-get",
        "-y",
        "-q",
        "-o",
        "DPkg::Lock::Timeout=300",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
        "dist-upgrade",
    ]


def test_dpkg_query_and_diff():
    before = parse_dpkg_query(
        "bash\t5.2-1\tii \nopenssl\t3.0.1-1\tii \nold\t1\trc \ngone\t1\tii \n"
    )
    assert before == {"bash": "5.2-1", "openssl": "3.0.1-1", "gone": "1"}
    after = {"bash": "5.2-1", "openssl": "3.0.2-1", "new": "2"}
    changes = diff_packages(before, after)
    assert [(c.name, c.old, c.new, c.kind) for c in changes] == [
        ("gone", "1", None, "removed"),
        ("new", None, "2", "installed"),
        ("openssl", "3.0.1-1", "3.0.2-1", "upgraded"),
    ]


class Scripted:
    host = "vm"

    def __init__(self, *replies):
        self.replies = list(replies)
        self.sent: list[str] = []

    def run(self, command, *args, timeout=60.0, mutating=False):
        text = quote(command, *args)
        self.sent.append(text)
        rc, err = self.replies.pop(0)
        return CommandResult("vm", text, rc, "", err, 0.1, mutating)

    def close(self):
        pass


def test_update_retries_while_the_lists_lock_is_held(monkeypatch):
    monkeypatch.setattr("pvepatch.guest.apt.time.sleep", lambda s: None)
    held = "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 812 (apt-get)\n"
    t = Scripted((100, held), (100, held), (0, ""))
    result, waits = Apt(t).update()
    assert result.ok and waits == 2 and len(t.sent) == 3


def test_update_does_not_retry_other_errors(monkeypatch):
    monkeypatch.setattr("pvepatch.guest.apt.time.sleep", lambda s: None)
    t = Scripted((100, "E: The repository 'http://x ./ Release' does not have a Release file.\n"))
    with pytest.raises(Exception, match="apt-get update failed"):
        Apt(t).update()
    assert len(t.sent) == 1


def test_package_names_are_checked():
    with pytest.raises(ValueError):
        Apt(Scripted()).install("qemu-guest-agent; reboot")


@pytest.mark.parametrize(
    "command",
    [
        "qm start 101",
        "qm shutdown 101 --timeout 180",
        "qm set 101 --agent enabled=1",
        "qm stop 101",
        apt_command("dist-upgrade"),
        "systemctl restart ssh",
        "reboot",
        "rm -rf /tmp/x",
        "echo x > /etc/motd",
        "dpkg --configure -a",
        "sh -c 'shutdown -h now'",
    ],
)
def test_mutating_commands_are_recognised(command):
    assert looks_mutating(command)


@pytest.mark.parametrize(
    "command",
    [
        "qm status 101",
        "qm status 101 --verbose",
        "qm config 101",
        "qm guest cmd 101 ping",
        "systemctl is-active qemu-guest-agent",
        "systemctl is-enabled qemu-guest-agent",
        "dpkg-query -f '${Status}' -W qemu-guest-agent",
        "cat /proc/sys/kernel/random/boot_id",
        "test -c /dev/virtio-ports/org.qemu.guest_agent.0",
        "dpkg --audit",
        "df -Pm /",
        "if test -e /var/run/reboot-required; then echo REQUIRED; cat /var/run/reboot-required.pkgs 2>/dev/null; fi; true",
    ],
)
def test_read_only_commands_pass(command):
    assert not looks_mutating(command)


def test_guard_refuses_declared_and_disguised_mutations_in_read_only_runs():
    inner = Scripted((0, ""))
    guard = ReadOnlyGuard(allow_mutating=False)
    t = GuardedTransport(inner, guard)
    with pytest.raises(ReadOnlyViolation, match="refused mutating command in a read-only run"):
        t.run("qm start %s", 101, mutating=True)
    with pytest.raises(ReadOnlyViolation):
        t.run("systemctl restart qemu-guest-agent")  # declared read-only, but is not
    t.run("qm status %s", 101)
    assert inner.sent == ["qm status 101"] and guard.mutating_sent == 0


def test_guard_counts_mutations_in_patch_runs():
    inner = Scripted((0, ""), (0, ""))
    guard = ReadOnlyGuard(allow_mutating=True)
    t = GuardedTransport(inner, guard)
    t.run("qm start %s", 101, mutating=True)
    t.run("qm status %s", 101)
    assert guard.mutating_sent == 1 and guard.sent == ["vm: qm start 101"]


def test_quote_keeps_values_out_of_the_shell():
    assert quote("test -c %s", "/dev/x; reboot") == "test -c '/dev/x; reboot'"
