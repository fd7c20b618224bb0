"""Unattended apt in the guest: the command lines, the lock retries, and the package diff.

apt-get update, dist-upgrade, autoremove and install run detached in the guest
(pvepatch.guest.detached), so nothing on this side can kill dpkg halfway."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from pvepatch.guest.detached import Detached, Reconnect, ShouldStop
from pvepatch.guest.facts import QUESTIONS
from pvepatch.transport.command import CommandResult, Transport

# Environment for every apt/dpkg call: no debconf prompts, no needrestart dialogs or service
# restarts (qemu-guest-agent must not be restarted under us), no apt-listchanges pager, and
# ucf-managed files kept like dpkg conffiles. `env` inside sudo, so sudoers env policy can't drop it.
APT_ENV = (
    "DEBIAN_FRONTEND=noninteractive",
    "NEEDRESTART_SUSPEND=1",
    "NEEDRESTART_MODE=l",
    "APT_LISTCHANGES_FRONTEND=none",
    "UCF_FORCE_CONFFOLD=1",
)
LOCK_MESSAGES = ("Could not get lock", "Unable to lock directory", "Unable to acquire the dpkg")


def apt_command(*words: str, lock_timeout: int = 600) -> str:
    """An apt-get command line, fully non-interactive, keeping old config files."""
    return " ".join(
        [
            "env",
            *APT_ENV,
            "apt-get",
            "-y",
            "-q",
            f"-o DPkg::Lock::Timeout={int(lock_timeout)}",
            "-o Dpkg::Options::=--force-confdef",
            "-o Dpkg::Options::=--force-confold",
            *words,
        ]
    )


def parse_dpkg_query(text: str) -> dict[str, str]:
    """`dpkg-query -W -f '${Package}\\t${Version}\\t${db:Status-Abbrev}\\n'` -> installed versions."""
    versions: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[2].strip().startswith("ii"):
            versions[parts[0]] = parts[1]
    return versions


@dataclass(frozen=True)
class PackageChange:
    name: str
    old: str | None
    new: str | None

    @property
    def kind(self) -> str:
        return "installed" if self.old is None else "removed" if self.new is None else "upgraded"


def diff_packages(before: dict[str, str], after: dict[str, str]) -> list[PackageChange]:
    """Packages whose installed version changed, appeared or disappeared."""
    changes = []
    for name in sorted(set(before) | set(after)):
        if before.get(name) != after.get(name):
            changes.append(PackageChange(name, before.get(name), after.get(name)))
    return changes


@dataclass
class AptRun:
    """What the patch stage did in one guest."""

    update: CommandResult | None = None
    upgrade: CommandResult | None = None
    autoremove: CommandResult | None = None
    changes: list[PackageChange] = field(default_factory=list)
    reboot_required: bool = False
    reboot_packages: list[str] = field(default_factory=list)
    lock_waits: int = 0
    boot_id_before: str | None = None  # the guest's boot before and after: it must not reboot
    boot_id_after: str | None = None  # itself during the upgrade
    planned: dict[str, str] = field(default_factory=dict)  # what apt-get -s said it would install


class Apt:
    """apt-get in one guest, over a Transport.

    The changing calls run detached (a transient systemd unit) and are followed: a lost
    connection is re-attached with `reconnect()`, and when `should_stop()` gives a reason (the
    run is interrupted) pvepatch stops following, never the unit (StoppedFollowing), and starts
    no new one (NotStarted).
    """

    def __init__(
        self,
        transport: Transport,
        lock_timeout: int = 600,
        command_timeout: float = 1800,
        *,
        reconnect: Reconnect | None = None,
        should_stop: ShouldStop | None = None,
        run_id: str | None = None,
    ):
        self.detached = Detached(transport, reconnect, should_stop, run_id)
        self.lock_timeout = lock_timeout
        self.command_timeout = command_timeout

    @property
    def transport(self) -> Transport:
        """The guest's connection now (a new one after a lost connection was re-attached)."""
        return self.detached.transport

    def installed(self) -> dict[str, str]:
        result = self.transport.run(QUESTIONS["packages"], timeout=60, mutating=False).check(
            "cannot list installed packages"
        )
        return parse_dpkg_query(result.stdout)

    def update(self) -> tuple[CommandResult, int]:
        """`apt-get update`, retried while another apt holds the lists lock (it ignores
        DPkg::Lock::Timeout). Returns the result and how many times it waited."""
        deadline = time.monotonic() + self.lock_timeout
        waits = 0
        while True:
            result = self._apt("update")
            locked = any(m in result.stderr for m in LOCK_MESSAGES)
            if result.ok or not locked or time.monotonic() > deadline:
                return result.check("apt-get update failed"), waits
            waits += 1
            time.sleep(5)

    def dist_upgrade(self) -> CommandResult:
        return self._apt("dist-upgrade").check("apt-get dist-upgrade failed")

    def autoremove(self) -> CommandResult:
        return self._apt("autoremove").check("apt-get autoremove failed")

    def install(self, *packages: str) -> CommandResult:
        names = " ".join(_package_name(p) for p in packages)
        return self._apt("install", names).check(f"apt-get install {names} failed")

    def _apt(self, *words: str) -> CommandResult:
        """One non-interactive apt-get call, run detached and followed; its result unchecked."""
        return self.detached.run(
            apt_command(*words, lock_timeout=self.lock_timeout),
            f"apt-get {words[0]}",
            self.command_timeout,
        )

    def pending_upgrades(self) -> list[str]:
        """Packages a dist-upgrade would still change (a simulation: read-only)."""
        return sorted(self.planned())

    def planned(self) -> dict[str, str]:
        """What a dist-upgrade would install now, package -> version (`apt-get -s`, read-only)."""
        result = self.transport.run(QUESTIONS["planned"], timeout=300, mutating=False).check(
            "apt-get -s dist-upgrade failed"
        )
        return parse_simulation(result.stdout)


def parse_simulation(text: str) -> dict[str, str]:
    """`Inst openssl [3.0.1-1] (3.0.2-1 Debian:12.5/stable [amd64])` -> {"openssl": "3.0.2-1"}."""
    planned = {}
    for line in text.splitlines():
        match = re.match(r"Inst (\S+)(?: \[[^\]]*\])? \(([^\s)]+)", line)
        if match:
            planned[match.group(1)] = match.group(2)
    return planned


def _package_name(name: str) -> str:
    """A Debian package name, checked: it goes into a command line."""
    if not name or not all(c.isalnum() or c in "+-.:" for c in name) or name.startswith("-"):
        raise ValueError(f"not a package name: {name!r}")
    return name
