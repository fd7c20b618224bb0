"""Fault definitions: what each one changes, in the guest or in the conf."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pvelab.fleet import faults, roster, seed
from pvelab.fleet.lab import Lab
from pvelab.image import debs, recipe
from pvelab.paths import LabPaths
from pvelab.pve.vmconf import parse_conf
from pvelab.sshcmd import LabError

CONF = "name: pbs\nagent: 1\nmemory: 384\n"
KERNEL, INITRD = Path("/cache/abc/vmlinuz"), Path("/cache/abc/initrd.img")


def test_every_fault_is_listed() -> None:
    assert set(faults.FAULTS) == {
        "agent-missing", "virtio-missing", "sshd-broken", "lock-backup",
        "ignore-shutdown", "dns-down", "dpkg-lock", "dpkg-halfconf", "slow-shutdown",
        "bad-update", "snapshot-unsupported", "ha-managed", "no-quorum", "migrated",
        "cloudinit-changed",
    }  # fmt: skip


def test_agent_missing_purges_agent_and_drops_conf_key() -> None:
    f = faults.get("agent-missing")
    assert "apt-get purge -y qemu-guest-agent" in f.guest_script
    assert faults.apply_conf(f, CONF, 101) == "memory: 384\nname: pbs\n"  # as PVE writes it: sorted


def test_lock_backup_is_host_side_only() -> None:
    f = faults.get("lock-backup")
    assert f.guest_script is None
    assert parse_conf(faults.apply_conf(f, CONF, 101)).lock == "backup"


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


# -- bad-update -----------------------------------------------------------------------------


def control(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()


def run_postinst(deb: Path, tmp_path: Path) -> tuple[list[str], str]:
    """Extract the deb, run its postinst `configure` with a recording `systemctl` on PATH;
    (systemctl calls, stdout)."""
    tree = tmp_path / deb.stem
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    postinst = tree / "DEBIAN" / "postinst"
    assert postinst.stat().st_mode & 0o111
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / f"{deb.stem}.systemctl"
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [str(postinst), "configure", ""], env=env, capture_output=True, text=True, check=True
    )
    return (calls.read_text().splitlines() if calls.exists() else []), proc.stdout


@pytest.fixture(scope="module")
def bad_update_debs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return faults.bad_update_debs(LabPaths(tmp_path_factory.mktemp("lab")))


def test_bad_update_debs_are_both_versions_of_the_package(bad_update_debs: list[Path]) -> None:
    assert [(control(d, "Package"), control(d, "Version")) for d in bad_update_debs] == [
        ("pvelab-bad-update", "1.0-1"),
        ("pvelab-bad-update", "1.1-1"),
    ]
    assert {control(d, "Architecture") for d in bad_update_debs} == {"all"}


def test_bad_update_1_0_postinst_leaves_the_agent_alone(
    bad_update_debs: list[Path], tmp_path: Path
) -> None:
    calls, out = run_postinst(bad_update_debs[0], tmp_path)
    assert calls == [] and out == ""


def test_bad_update_1_1_postinst_stops_disables_and_masks_the_agent(
    bad_update_debs: list[Path], tmp_path: Path
) -> None:
    calls, out = run_postinst(bad_update_debs[1], tmp_path)
    assert calls == [
        "stop qemu-guest-agent.service",
        "disable qemu-guest-agent.service",
        "mask qemu-guest-agent.service",
    ]
    assert "qemu-guest-agent.service stopped, disabled and masked" in out


def test_bad_update_debs_are_built_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = LabPaths(tmp_path)
    first = faults.bad_update_debs(paths)
    assert all(deb.is_relative_to(tmp_path / "faults") for deb in first)

    def no_build(version: str, out_dir: Path) -> Path:
        raise AssertionError(f"rebuilt {version} into {out_dir}")

    monkeypatch.setattr(faults, "build_bad_update", no_build)
    assert faults.bad_update_debs(paths) == first


def test_bad_update_package_stays_out_of_the_image_recipe() -> None:
    source = debs.SOURCE_DIR / faults.BAD_UPDATE
    assert any(p.is_file() for p in source.rglob("*"))
    assert faults.BAD_UPDATE not in debs.ALL
    assert [p for p in recipe.recipe_files() if p.is_relative_to(source)] == []


def test_bad_update_guest_installs_the_harmless_version_and_checks_the_agent() -> None:
    script = faults.get("bad-update").guest_script
    assert "apt-get update" in script
    assert "apt-get install -y pvelab-bad-update=1.0-1\n" in script
    assert '= "install ok installed 1.0-1"' in script
    assert "systemctl is-active --quiet qemu-guest-agent" in script
    assert "upgrade" not in script  # the patch run's dist-upgrade brings 1.1-1


def fault_lab(tmp_path: Path) -> Lab:
    """A Lab in tmp_path whose VMs have their confs (nothing running)."""
    paths = LabPaths(tmp_path / "lab")
    paths.pve_conf_dir.mkdir(parents=True)
    for vm in roster.FLEET:
        paths.conf(vm.vmid).write_text(roster.render_conf(paths, vm, KERNEL, INITRD))
    return Lab(paths, base=22000)


def test_bad_update_fault_offers_the_update_before_the_guest_installs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = fault_lab(tmp_path)
    lab.paths.repo_dir.mkdir()
    (lab.paths.repo_dir / faults.REPO_STAMP).write_text("repo-0123456789abcdef\n")
    sent: list[tuple[str, str]] = []

    def guest_result(vm: roster.VM, cmd: list[str], timeout: float) -> object:
        packages = (lab.paths.repo_dir / "Packages").read_text()
        sent.append((vm.name, cmd[-1]))
        assert "Package: pvelab-bad-update\nVersion: 1.1-1\n" in packages
        return type("Result", (), {"ok": True})()

    monkeypatch.setattr(lab, "guest_result", guest_result)
    lab.fault("bad-update", "ca", log=lambda _: None)
    assert [name for name, _ in sent] == ["ca"]
    assert sent[0][1].startswith(faults.BAD_UPDATE_SCRIPT)
    assert (lab.paths.conf(104)).read_text() == roster.render_conf(
        lab.paths, roster.by_name("ca"), KERNEL, INITRD
    )


def test_bad_update_needs_the_lab_repository(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="no lab repository in .*/repo: bring the lab up first"):
        faults.offer_bad_update(LabPaths(tmp_path), roster.by_name("pbs"))


# -- snapshot-unsupported -------------------------------------------------------------------


def test_snapshot_unsupported_adds_a_raw_disk_file_and_its_conf_line(tmp_path: Path) -> None:
    lab = fault_lab(tmp_path)
    before = parse_conf(lab.paths.conf(101).read_text()).main
    lab.fault("snapshot-unsupported", "pbs", log=lambda _: None)
    disk = lab.paths.disks_dir / "vm-101-disk-1.raw"
    assert disk.stat().st_size == 8 * 1024 * 1024
    after = parse_conf(lab.paths.conf(101).read_text()).main
    assert after == {**before, "virtio1": "local:vm-101-disk-1.raw,size=8M"}
    assert "virtio1" not in parse_conf(lab.paths.conf(102).read_text()).main


def test_reset_removes_the_raw_disk_with_the_overlay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = fault_lab(tmp_path)
    seed.ensure_operator_key(lab.paths)
    lab.fault("snapshot-unsupported", "pbs", log=lambda _: None)
    lab.fault("snapshot-unsupported", "pihole", log=lambda _: None)
    lab.paths.disk(101).write_bytes(b"overlay")
    ups: list[object] = []
    monkeypatch.setattr(lab, "up", lambda vms, **kw: ups.append(vms) or {})
    lab.reset("pbs", log=lambda _: None)
    assert ups == [["pbs"]]
    assert not lab.paths.disk(101).exists() and not lab.paths.conf(101).exists()
    assert not (lab.paths.disks_dir / "vm-101-disk-1.raw").exists()
    assert (lab.paths.disks_dir / "vm-102-disk-1.raw").exists()  # another VM's fault stays
