"""The apt command line, the package diff, and the read-only guard."""

from __future__ import annotations

import shlex

import pytest
from pvepatch.errors import ReadOnlyViolation
from pvepatch.guest.apt import (
    Apt,
    apt_command,
    diff_packages,
    parse_dpkg_query,
    parse_simulation,
)
from pvepatch.transport.command import (
    CommandResult,
    GuardedTransport,
    ReadOnlyGuard,
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


def test_package_names_are_checked():
    with pytest.raises(ValueError):
        Apt(Connection()).install("qemu-guest-agent; reboot")


class Connection:
    """A connection that answers every finished command line with rc 0 and records it."""

    host = "vm"
    host_key = "ssh-ed25519 SHA256:test"

    def __init__(self):
        self.sent: list[tuple[str, bool]] = []

    def run(self, command, *, timeout, mutating):
        self.sent.append((command, mutating))
        return CommandResult("vm", command, 0, "", "", 0.1, mutating)

    def close(self):
        pass


def test_guard_refuses_what_is_declared_mutating_in_read_only_runs():
    inner = Connection()
    guard = ReadOnlyGuard(allow_mutating=False)
    t = GuardedTransport(inner, guard)
    with pytest.raises(ReadOnlyViolation, match="refused mutating command in a read-only run"):
        t.run("qm start %s", 101, mutating=True)
    t.run("apt-get -s -o Debug::NoLocking=1 dist-upgrade", mutating=False)  # a simulation
    t.run("grep -c 'rm -rf' %s", "/var/log/x", mutating=False)  # mentions rm, changes nothing
    assert [c for c, _ in inner.sent] == [
        "apt-get -s -o Debug::NoLocking=1 dist-upgrade",
        "grep -c 'rm -rf' /var/log/x",
    ]
    assert guard.mutating_sent == 0


def test_every_command_must_declare_what_it_is():
    t = GuardedTransport(Connection(), ReadOnlyGuard(allow_mutating=True))
    with pytest.raises(TypeError, match="mutating"):
        t.run("qm status %s", 101)  # no declaration: a programming error, not a guess


def test_guard_counts_mutations_in_patch_runs():
    inner = Connection()
    guard = ReadOnlyGuard(allow_mutating=True)
    t = GuardedTransport(inner, guard)
    t.run("qm start %s", 101, mutating=True)
    t.run("qm status %s", 101, mutating=False)
    assert guard.mutating_sent == 1 and guard.sent == ["vm: qm start 101"]


def test_quote_keeps_values_out_of_the_shell():
    assert quote("test -c %s", "/dev/x; reboot") == "test -c '/dev/x; reboot'"


def test_simulation_lines_give_the_planned_versions():
    text = (
        "NOTE: This is only a simulation!\n"
        "Inst openssl [3.0.11-1~deb12u1] (3.0.15-1~deb12u1 Debian-Security:12/stable-security [amd64])\n"
        "Inst linux-image-6.1.0-28-amd64 (6.1.119-1 Debian-Security:12/stable-security [amd64])\n"
        "Conf openssl (3.0.15-1~deb12u1 Debian-Security:12/stable-security [amd64])\n"
        "Inst pvelab-motd [1.0] (2.0)\n"
    )
    assert parse_simulation(text) == {
        "openssl": "3.0.15-1~deb12u1",
        "linux-image-6.1.0-28-amd64": "6.1.119-1",
        "pvelab-motd": "2.0",
    }
