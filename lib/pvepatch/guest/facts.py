"""In-guest facts, read through pytest-testinfra modules over pvepatch's verified transport."""

from __future__ import annotations

from typing import Any

import testinfra.host
from testinfra.backend.base import BaseBackend
from testinfra.backend.base import CommandResult as TestinfraResult

from pvepatch.proxmox.parse import AGENT_PORT
from pvepatch.transport.command import CommandResult, Transport, quote


def service_question(service: str) -> str:
    """The line testinfra sends for `host.service(service).is_running` (on systemd)."""
    return quote("systemctl is-active %s", service)


# The read-only questions a Guest asks, by name: `Guest.asked` gives their command lines so a
# caller can ask several in one round trip (VMCycle.asked_together) before asking them one by one.
QUESTIONS = {
    "boot_id": "cat /proc/sys/kernel/random/boot_id",
    "hostname": "hostname",
    "kernel": "uname -r",
    "macs": "cat /sys/class/net/*/address",
    "free_root": quote("df -Pm %s", "/"),
    "free_boot": quote("df -Pm %s", "/boot"),
    "dpkg_audit": "dpkg --audit",
    "virtio_port": quote("test -c %s", AGENT_PORT),
    "package_managers": "pgrep -a -x 'apt|apt-get|aptitude|dpkg|unattended-upgr|unattended-upgrade'",
    "answers": "true",
    # cloud-init's record of the instance it set up (absent: the guest does not run cloud-init)
    "cloud_instance_id": "cat /var/lib/cloud/data/instance-id 2>/dev/null; true",
    "packages": quote("dpkg-query -W -f %s", "${Package}\t${Version}\t${db:Status-Abbrev}\n"),
    "planned": "apt-get -s -o Debug::NoLocking=1 dist-upgrade",  # a simulation: read-only
    "reboot_required": (
        "if test -e /var/run/reboot-required; then echo REQUIRED; "
        "cat /var/run/reboot-required.pkgs 2>/dev/null; fi; true"
    ),
    # The lines testinfra's modules send for `host.package(AGENT).is_installed` and
    # `host.service(AGENT).is_running`, and to detect the system first (tests/unit checks them:
    # if testinfra changes them, they are only asked twice).
    "system_type": "uname -s",
    "os_release": "cat /etc/os-release",
    "arch": "uname -m",
    "systemd": "test -d /run/systemd/system/",
    "agent_package": "dpkg-query -f '${Status}' -W qemu-guest-agent",
    "agent_service": service_question("qemu-guest-agent"),
}


class TransportBackend(BaseBackend):
    """A testinfra backend that sends every command through a pvepatch Transport.

    testinfra's own paramiko backend accepts any host key; this one inherits the
    verified connection (and the read-only guard) of the Transport.
    """

    NAME = "pvepatch"

    def __init__(self, transport: Transport, timeout: float = 60.0, **kwargs: Any):
        self.transport = transport
        self.timeout = timeout
        super().__init__(transport.host, **kwargs)

    def run(self, command: str, *args: str, **kwargs: Any) -> TestinfraResult:
        """testinfra's modules only ask questions (package.is_installed, service.is_running)."""
        result = self.transport.run(command, *args, timeout=self.timeout, mutating=False)
        return self.result(result.rc, self.encode(result.command), result.stdout, result.stderr)


def testinfra_host(transport: Transport) -> testinfra.host.Host:
    """A testinfra Host (`.package`, `.service`, `.file`, ...) over `transport`."""
    return testinfra.host.Host(TransportBackend(transport))


class Guest:
    """Read-only questions about one guest, asked over SSH.

    `host` is a testinfra Host to keep: given one, it is moved onto `transport`, so what testinfra
    detected about the system (its OS, systemd) is not asked again on a new connection."""

    def __init__(self, transport: Transport, host: testinfra.host.Host | None = None):
        self.transport = transport
        if host is None:
            host = testinfra_host(transport)
        else:
            host.backend.transport = transport
        self.host = host

    @staticmethod
    def asked(*names: str) -> list[str]:
        """The command lines of the named questions (QUESTIONS)."""
        return [QUESTIONS[name] for name in names]

    def _out(self, command: str, *args: object) -> str:
        return (
            self.transport.run(command, *args, timeout=30.0, mutating=False).check().stdout.strip()
        )

    def answers(self) -> CommandResult:
        return self.transport.run(QUESTIONS["answers"], timeout=30.0, mutating=False).check(
            "SSH answered but 'true' failed"
        )

    def boot_id(self) -> str:
        return self._out(QUESTIONS["boot_id"])

    def cloud_instance_id(self) -> str | None:
        """The cloud-init instance-id the guest was last set up as; None without cloud-init."""
        return self._out(QUESTIONS["cloud_instance_id"]) or None

    def host_key(self) -> str | None:
        """The host key this run's SSH connection verified (None if it verified none)."""
        return self.transport.host_key

    def hostname(self) -> str:
        return self._out(QUESTIONS["hostname"])

    def kernel(self) -> str:
        return self._out(QUESTIONS["kernel"])

    def macs(self) -> set[str]:
        text = self._out(QUESTIONS["macs"])
        macs = {line.strip().lower() for line in text.splitlines() if line.strip()}
        return macs - {"00:00:00:00:00:00"}  # loopback

    def free_mb(self, path: str) -> int:
        """Free megabytes on the filesystem holding `path`."""
        text = self._out("df -Pm %s", path)
        return int(text.splitlines()[-1].split()[3])

    def dpkg_audit(self) -> str:
        """`dpkg --audit` output: empty when the package database is consistent."""
        return (
            self.transport.run(QUESTIONS["dpkg_audit"], timeout=60.0, mutating=False)
            .check()
            .stdout.strip()
        )

    def virtio_port_is_chardev(self) -> bool:
        return self.transport.run(QUESTIONS["virtio_port"], timeout=30.0, mutating=False).ok

    def reboot_required(self) -> tuple[bool, list[str]]:
        """Whether the guest asks for a reboot, and which packages asked."""
        text = self._out(QUESTIONS["reboot_required"])
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines or lines[0] != "REQUIRED":
            return False, []
        return True, sorted(set(lines[1:]))

    def newest_kernel(self) -> str | None:
        """The newest kernel installed in /boot (version sort), None when none is found."""
        text = self._out("ls /boot 2>/dev/null | sed -n 's/^vmlinuz-//p' | sort -V | tail -n 1")
        return text or None

    def why_reboot(self) -> str | None:
        """Why the guest needs a reboot (reboot-required, or a newer kernel than the running
        one), or None when it does not."""
        required, packages = self.reboot_required()
        if required:
            return "/var/run/reboot-required" + (f" ({', '.join(packages)})" if packages else "")
        running, newest = self.kernel(), self.newest_kernel()
        if newest and newest != running:
            return f"running kernel {running}, newest installed {newest}"
        return None

    def package_managers_running(self) -> str:
        """apt, dpkg or unattended-upgrades running now (their `pgrep -a` lines), or ''."""
        result = self.transport.run(
            QUESTIONS["package_managers"],
            timeout=30.0,
            mutating=False,
        )
        if result.rc not in (0, 1):
            result.check("cannot list processes with pgrep")
        return result.stdout.strip()
