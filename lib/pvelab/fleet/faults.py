"""Faults the lab can inject: real changes inside a guest (over SSH as root) or in its PVE conf.

Every fault is undone by `pvelab reset` (fresh overlay from the base image, fresh conf, re-seed),
so none of them needs an undo of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pvelab.fleet.roster import VM
from pvelab.pve.vmconf import edited_conf
from pvelab.sshcmd import LabError

AGENT_MISSING = """\
set -e
export DEBIAN_FRONTEND=noninteractive
apt-get purge -y qemu-guest-agent
! dpkg-query -W -f '${Status}' qemu-guest-agent 2>/dev/null | grep -q 'install ok installed'
"""

# The lab boots its own initrd, which loads virtio_console before the root fs is mounted, so a
# module blacklist in the guest would not bite. udev makes the /dev/virtio-ports/<name> link:
# override the default rules without it (and drop the link should the initrd's udev make one).
VIRTIO_MISSING = """\
set -e
sed '/virtio-ports/d' /lib/udev/rules.d/50-udev-default.rules > /etc/udev/rules.d/50-udev-default.rules
cat > /etc/udev/rules.d/99-pvelab-virtio-missing.rules <<'EOF'
# pvelab fault virtio-missing: no /dev/virtio-ports/org.qemu.guest_agent.0 from the next boot on
SUBSYSTEM=="virtio-ports", ATTR{name}=="org.qemu.guest_agent.0", RUN+="/bin/rm -f /dev/virtio-ports/org.qemu.guest_agent.0"
EOF
"""

SSHD_BROKEN = """\
set -e
mkdir -p /etc/systemd/system/ssh.service.d
cat > /etc/systemd/system/ssh.service.d/pvelab-sshd-broken.conf <<'EOF'
# pvelab fault sshd-broken: sshd refuses to start from the next boot on
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'echo "pvelab fault sshd-broken" >&2; exit 1'
EOF
# Reload so systemd knows the unit; the running sshd (and this session) keep working.
systemctl daemon-reload
"""

IGNORE_SHUTDOWN = """\
set -e
mkdir -p /etc/systemd/logind.conf.d /etc/systemd/system/qemu-guest-agent.service.d
cat > /etc/systemd/logind.conf.d/pvelab-ignore-shutdown.conf <<'EOF'
# pvelab fault ignore-shutdown: the ACPI power button (qm shutdown without agent) does nothing
[Login]
HandlePowerKey=ignore
EOF
cat > /etc/systemd/system/qemu-guest-agent.service.d/pvelab-ignore-shutdown.conf <<'EOF'
# pvelab fault ignore-shutdown: the agent refuses guest-shutdown
[Service]
ExecStart=
ExecStart=-/usr/sbin/qemu-ga --block-rpcs=guest-shutdown
EOF
systemctl daemon-reload
systemctl restart systemd-logind
systemctl restart qemu-guest-agent
"""

DNS_DOWN = """\
set -e
systemctl stop dnsmasq
systemctl mask dnsmasq
! systemctl is-active --quiet dnsmasq
"""

# apt holds /var/lib/dpkg/lock-frontend with a POSIX (fcntl) lock: find it in /proc/locks by inode.
DPKG_LOCK = """\
set -e
mkdir -p /etc/pvelab
echo {seconds} > /etc/pvelab/slow-seconds
systemctl reset-failed pvelab-dpkg-lock.service 2>/dev/null || true
systemd-run --unit=pvelab-dpkg-lock --collect --setenv=DEBIAN_FRONTEND=noninteractive \\
    sh -c 'apt-get update && apt-get install -y --reinstall pvelab-slow'
inode=$(stat -c %i /var/lib/dpkg/lock-frontend)
i=0
while [ $i -lt 120 ]; do
    if grep -q ":$inode " /proc/locks; then echo "dpkg lock held"; exit 0; fi
    sleep 0.5; i=$((i + 1))
done
echo "pvelab fault dpkg-lock: dpkg lock not taken within 60 s" >&2
systemctl status --no-pager pvelab-dpkg-lock.service >&2 || true
exit 1
"""

DPKG_HALFCONF = """\
set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
dir=$(mktemp -d)
cd "$dir"
apt-get download pvelab-halfconf
dpkg --unpack ./pvelab-halfconf_*.deb
rm -rf "$dir"
dpkg --audit || true
"""

DPKG_LOCK_SECONDS = 75

# A unit started now and at every boot whose ExecStop sleeps: every shutdown from now on (the
# agent's guest-shutdown or the ACPI power button) waits for it before the guest powers off.
# systemd's default 90 s stop timeout would cut the sleep short, hence TimeoutStopSec above it.
SLOW_SHUTDOWN = """\
set -e
cat > /etc/systemd/system/pvelab-slow-shutdown.service <<'EOF'
# pvelab fault slow-shutdown: the guest takes ~{seconds} s to power off from the next shutdown on
[Unit]
Description=pvelab fault slow-shutdown (stopping takes {seconds} s)

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/bin/sleep {seconds}
TimeoutStopSec={stop_timeout}

[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable --now pvelab-slow-shutdown.service
systemctl is-active --quiet pvelab-slow-shutdown.service
"""

# Longer than 90 s, so a restart that stops waiting at 90 s is caught.
SLOW_SHUTDOWN_SECONDS = 110


@dataclass(frozen=True)
class Fault:
    name: str
    summary: str
    guest_script: str | None = None
    conf: dict[str, str | None] = field(default_factory=dict)  # value None deletes the key
    role: str | None = None  # only VMs of this role can take the fault
    timeout: float = 180


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("agent-missing", "qemu-guest-agent purged in the guest, `agent` off in the conf",
              AGENT_MISSING, {"agent": None}),
        Fault("virtio-missing", "udev makes no /dev/virtio-ports link: no virtio port after the next boot",
              VIRTIO_MISSING),
        Fault("sshd-broken", "ssh.service drop-in: sshd fails to start from the next boot on",
              SSHD_BROKEN),
        Fault("lock-backup", "`lock: backup` in the VM's conf", None, {"lock": "backup"}),
        Fault("ignore-shutdown", "guest ignores ACPI power button and the agent's guest-shutdown",
              IGNORE_SHUTDOWN),
        Fault("dns-down", "dnsmasq stopped and masked", DNS_DOWN, role="pihole"),
        Fault("dpkg-lock", f"pvelab-slow installing: dpkg lock held ~{DPKG_LOCK_SECONDS} s",
              DPKG_LOCK.format(seconds=DPKG_LOCK_SECONDS)),
        Fault("dpkg-halfconf", "pvelab-halfconf unpacked, not configured (dpkg --audit)",
              DPKG_HALFCONF),
        Fault("slow-shutdown", f"guest takes ~{SLOW_SHUTDOWN_SECONDS} s to power off (a unit's ExecStop sleeps)",
              SLOW_SHUTDOWN.format(seconds=SLOW_SHUTDOWN_SECONDS,
                                   stop_timeout=SLOW_SHUTDOWN_SECONDS + 120)),
    )
}  # fmt: skip


def get(name: str) -> Fault:
    try:
        return FAULTS[name]
    except KeyError:
        raise LabError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}") from None


def check_applicable(fault: Fault, vm: VM) -> None:
    if fault.role is not None and vm.role != fault.role:
        raise LabError(
            f"fault {fault.name} needs a VM of role {fault.role}; {vm.name} is {vm.role}"
        )


def apply_conf(fault: Fault, text: str) -> str:
    """The VM's conf text with the fault's host-side edits made."""
    for key, value in fault.conf.items():
        text = edited_conf(text, key, value)
    return text
