"""The lab itself, end to end: its VMs answer with pinned keys, and every fault really bites.

The tests run in file order on the session's lab (tests/lab/conftest.py), on pbs and pihole;
later tests build on the faults earlier ones injected, as an operator's session would. The
module ends by resetting both VMs, so the next module finds a fresh fleet.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.resolver
import pytest
from pvelab.fleet import roster
from pvelab.fleet.bootwait import poll
from pvelab.fleet.lab import Lab

pytestmark = pytest.mark.lab

VMS = ["pbs", "pihole"]
PBS, PIHOLE = roster.by_name("pbs"), roster.by_name("pihole")


@pytest.fixture(scope="module", autouse=True)
def fresh_afterwards(lab: Lab) -> Iterator[None]:
    """Leave pbs and pihole as fresh as the other modules expect them."""
    yield
    lab.reset(VMS, timeout=420)


def resolve(port: int, name: str, tcp: bool = True) -> str | None:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers, r.port, r.lifetime = ["127.0.0.1"], port, 3.0
    try:
        return r.resolve(name, "A", tcp=tcp)[0].to_text()
    except dns.exception.DNSException:
        return None


def cold_restart(lab: Lab, *vms: roster.VM) -> None:
    for vm in vms:
        result = lab.qm("shutdown", vm.vmid, "--timeout", 120, check=False)
        assert result.ok, result
    for vm in vms:
        lab.qm("start", vm.vmid)


def test_ssh_with_pinned_key_works(lab: Lab) -> None:
    assert lab.guest_run("pbs", "true")[0] == 0


def test_changed_host_key_is_refused(lab: Lab, tmp_path: Path) -> None:
    pinned = lab.paths.known_hosts.read_text()
    wrong = pinned.replace(f"[127.0.0.1]:{lab.base + 101} ", "#").replace(
        f"[127.0.0.1]:{lab.base + 102} ", f"[127.0.0.1]:{lab.base + 101} "
    )
    lab.paths.known_hosts.write_text(wrong)
    try:
        rc, _, err = lab.guest_run("pbs", "true")
    finally:
        lab.paths.known_hosts.write_text(pinned)
    assert rc == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in err


def test_each_vm_has_its_own_hostname(lab: Lab) -> None:
    assert [lab.guest_run(vm, "hostname")[1].strip() for vm in VMS] == VMS


def test_each_vm_has_its_own_host_key(lab: Lab) -> None:
    keys = [lab.guest_run(vm, "cat /etc/ssh/ssh_host_ed25519_key.pub")[1].split()[1] for vm in VMS]
    assert keys[0] != keys[1]
    for vm, key in zip(VMS, keys, strict=True):
        assert f"[127.0.0.1]:{roster.by_name(vm).ssh_port(lab.base)} ssh-ed25519 {key}" in (
            lab.paths.known_hosts.read_text()
        )


def test_qm_list_over_pve_ssh_shows_vms_running(lab: Lab) -> None:
    rows = {line.split()[1]: line.split()[2] for line in lab.qm("list").stdout.splitlines()[1:]}
    assert {vm: rows.get(vm) for vm in VMS} == {"pbs": "running", "pihole": "running"}


def test_qm_log_records_the_starts(lab: Lab) -> None:
    calls = [(entry["argv"], entry["rc"]) for entry in lab.qm_log()]
    assert (["start", "101"], 0) in calls
    assert (["start", "102"], 0) in calls


def test_virtio_port_exists_in_guest(lab: Lab) -> None:
    rc, out, _ = lab.guest_run("pbs", "readlink /dev/virtio-ports/org.qemu.guest_agent.0")
    assert (rc, out.strip().startswith("../vport")) == (0, True)


def test_agent_answers_through_qm(lab: Lab) -> None:
    result = lab.qm("guest", "cmd", 101, "ping", check=False)
    assert (result.rc, result.stdout) == (0, "")


def test_pihole_resolves_and_blocks(lab: Lab) -> None:
    port = PIHOLE.dns_port(lab.base)
    assert resolve(port, "pi.hole") is not None
    assert resolve(port, "ads.example.com") == "0.0.0.0"


def test_fault_dns_down_silences_dns(lab: Lab) -> None:
    lab.fault("dns-down", "pihole")
    assert resolve(PIHOLE.dns_port(lab.base), "pi.hole") is None
    assert lab.guest_run("pihole", "systemctl is-enabled dnsmasq")[1].strip() == "masked"


def test_fault_lock_backup_blocks_qm_shutdown(lab: Lab) -> None:
    lab.fault("lock-backup", "pbs")
    result = lab.qm("shutdown", 101, check=False)
    assert result.rc == 255
    assert "VM is locked (backup)" in result.stderr
    lab.qm("unlock", 101)


def test_fault_agent_missing_removes_agent(lab: Lab) -> None:
    lab.fault("agent-missing", "pihole")
    assert lab.guest_run("pihole", "command -v qemu-ga")[0] != 0
    result = lab.qm("guest", "cmd", 102, "ping", check=False)
    assert result.rc != 0
    assert "No QEMU guest agent configured" in result.stderr


def test_fault_sshd_broken_keeps_current_sessions(lab: Lab) -> None:
    lab.fault("sshd-broken", "pbs")
    lab.fault("virtio-missing", "pihole")
    assert lab.guest_run("pbs", "true")[0] == 0


def test_faults_bite_after_cold_restart(lab: Lab) -> None:
    cold_restart(lab, PBS, PIHOLE)
    assert poll(lambda: lab.qm("guest", "cmd", 101, "ping", check=False).ok, 300, 3)
    ssh_state = "systemctl show -p ActiveState --value ssh"

    def ssh_failed() -> bool:
        r = lab.qm("guest", "exec", 101, "--", "sh", "-c", ssh_state, check=False)
        return '"out-data" : "failed' in r.stdout

    assert poll(ssh_failed, 120, 3)
    rc, _, err = lab.guest_run("pbs", "true")
    assert rc == 255, err
    lab.wait(["pihole"], timeout=300)  # agent off in its conf: waits for SSH only


def test_fault_virtio_missing_removes_the_port(lab: Lab) -> None:
    out = lab.guest_run("pihole", "ls /dev/virtio-ports 2>&1")[1]
    assert "No such file or directory" in out


def test_reset_undoes_faults(lab: Lab) -> None:
    lab.reset(VMS, timeout=420)
    assert lab.guest_run("pbs", "true")[0] == 0
    assert lab.qm("guest", "cmd", 102, "ping", check=False).ok
    assert resolve(PIHOLE.dns_port(lab.base), "pi.hole") is not None
    assert lab.guest_run("pihole", "dpkg --audit")[1].strip() == ""


def test_fault_ignore_shutdown_makes_qm_shutdown_time_out(lab: Lab) -> None:
    lab.fault("ignore-shutdown", "pbs")
    result = lab.qm("shutdown", 101, "--timeout", 10, check=False)
    assert result.rc == 255
    assert "VM quit/powerdown failed" in result.stderr
    assert lab.qemu_pid(PBS) is not None


def test_fault_dpkg_halfconf_leaves_audit_unclean(lab: Lab) -> None:
    lab.fault("dpkg-halfconf", "pihole")
    assert "pvelab-halfconf" in lab.guest_run("pihole", "dpkg --audit")[1]


def test_fault_dpkg_lock_blocks_apt(lab: Lab) -> None:
    lab.fault("dpkg-lock", "pihole")
    rc, _, err = lab.guest_run("pihole", "apt-get install -y pvelab-motd")
    assert rc == 100
    assert "Could not get lock" in err
