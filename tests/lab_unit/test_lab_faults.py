"""Fault definitions: what each one changes, in the guest or in the conf."""

from __future__ import annotations

import pytest
from pvelab.fleet import faults, roster
from pvelab.pve.vmconf import parse_conf
from pvelab.sshcmd import LabError

CONF = "name: pbs\nagent: 1\nmemory: 384\n"


def test_every_fault_is_listed() -> None:
    assert set(faults.FAULTS) == {
        "agent-missing", "virtio-missing", "sshd-broken", "lock-backup",
        "ignore-shutdown", "dns-down", "dpkg-lock", "dpkg-halfconf", "slow-shutdown",
    }  # fmt: skip


def test_agent_missing_purges_agent_and_drops_conf_key() -> None:
    f = faults.get("agent-missing")
    assert "apt-get purge -y qemu-guest-agent" in f.guest_script
    assert faults.apply_conf(f, CONF) == "memory: 384\nname: pbs\n"  # as PVE writes it: sorted


def test_lock_backup_is_host_side_only() -> None:
    f = faults.get("lock-backup")
    assert f.guest_script is None
    assert parse_conf(faults.apply_conf(f, CONF)).lock == "backup"


def test_virtio_missing_drops_the_udev_link_and_nothing_else() -> None:
    script = faults.get("virtio-missing").guest_script
    assert "sed '/virtio-ports/d' /lib/udev/rules.d/50-udev-default.rules" in script
    assert "/etc/udev/rules.d/99-pvelab-virtio-missing.rules" in script
    assert "update-initramfs" not in script and "modprobe" not in script


def test_sshd_broken_is_a_drop_in_that_fails_start() -> None:
    script = faults.get("sshd-broken").guest_script
    assert "/etc/systemd/system/ssh.service.d/" in script
    assert "ExecStartPre=\nExecStartPre=" in script
    assert "restart ssh" not in script  # the current session keeps working


def test_ignore_shutdown_blocks_acpi_and_agent() -> None:
    script = faults.get("ignore-shutdown").guest_script
    assert "HandlePowerKey=ignore" in script
    assert "--block-rpcs=guest-shutdown" in script
    assert "systemctl restart qemu-guest-agent" in script


def test_dns_down_masks_dnsmasq_and_needs_a_pihole() -> None:
    f = faults.get("dns-down")
    assert "systemctl mask dnsmasq" in f.guest_script
    faults.check_applicable(f, roster.by_name("pihole-backup"))
    with pytest.raises(LabError, match="needs a VM of role pihole; pbs is plain"):
        faults.check_applicable(f, roster.by_name("pbs"))


def test_dpkg_lock_runs_detached_and_waits_for_the_lock() -> None:
    script = faults.get("dpkg-lock").guest_script
    assert "systemd-run --unit=pvelab-dpkg-lock" in script
    assert "pvelab-slow" in script
    assert f"echo {faults.DPKG_LOCK_SECONDS} > /etc/pvelab/slow-seconds" in script
    assert "/proc/locks" in script


def test_dpkg_halfconf_unpacks_without_configuring() -> None:
    script = faults.get("dpkg-halfconf").guest_script
    assert "apt-get download pvelab-halfconf" in script
    assert "dpkg --unpack" in script
    assert "--configure" not in script


def test_slow_shutdown_stop_sleeps_past_90_s_and_systemd_waits_for_it() -> None:
    script = faults.get("slow-shutdown").guest_script
    assert faults.SLOW_SHUTDOWN_SECONDS > 90
    assert f"ExecStop=/bin/sleep {faults.SLOW_SHUTDOWN_SECONDS}\n" in script
    stop_timeout = int(script.split("TimeoutStopSec=")[1].split()[0])
    assert stop_timeout > faults.SLOW_SHUTDOWN_SECONDS  # systemd must not cut the sleep short
    assert "RemainAfterExit=yes" in script  # active now, so the next shutdown stops it
    assert "WantedBy=multi-user.target" in script  # and again after every boot
    assert "systemctl enable --now pvelab-slow-shutdown.service" in script


def test_unknown_fault_names_the_known_ones() -> None:
    with pytest.raises(LabError, match="unknown fault 'nope'; known: agent-missing"):
        faults.get("nope")
