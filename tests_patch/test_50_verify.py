"""Stage 5, verify (read-only): the VM is healthy now; in a patch run, it really restarted once."""

import time

import pytest
from pvepatch import dns
from pvepatch.qm import AGENT_PORT

pytestmark = [pytest.mark.stage("verify"), pytest.mark.verify, pytest.mark.patch]


def test_ssh_answers(cycle):
    assert cycle.guest().answers().ok


def test_virtio_port_is_character_device(cycle):
    assert cycle.guest().virtio_port_is_chardev(), (
        f"{AGENT_PORT} is missing or not a character device"
    )


def test_guest_agent_service_active(cycle):
    assert cycle.guest().host.service("qemu-guest-agent").is_running


def test_guest_agent_ping(cycle, target):
    result = cycle.qm().agent_ping()
    assert result.ok, f"qm guest cmd {target.vmid} ping: {result.stderr.strip()}"


def test_vm_status_running(cycle):
    assert cycle.qm().status() == "running"


@pytest.fixture
def restarted(record, patch_run):
    if not patch_run:
        pytest.skip("no restart in a verify run")
    if record.restart is None or not record.restart.started:
        pytest.fail("the restart stage did not restart this VM")
    return record


def test_boot_id_changed(restarted, cycle):
    now = cycle.guest().boot_id()
    restarted.facts["boot_id_after"] = now
    assert now != restarted.facts["boot_id_before"]


def test_qemu_process_replaced(restarted, cycle):
    status = cycle.qm().run_status()
    restarted.facts["qemu_pid_after"] = status.pid
    assert status.pid and status.pid != restarted.facts["qemu_pid_before"]


def test_started_exactly_once(restarted, cycle):
    """QEMU's uptime matches our one start: not older (no restart), not younger (a second one)."""
    status = cycle.qm().run_status()
    now = time.time()
    since_sent = now - restarted.restart.times["start_sent"]
    since_started = now - restarted.restart.times["started"]
    assert status.uptime is not None, "qm status --verbose shows no uptime"
    assert since_started - 5 <= status.uptime <= since_sent + 2, (
        f"QEMU uptime {status.uptime} s, but our qm start was sent {since_sent:.0f} s ago"
    )


@pytest.mark.pihole
def test_dns_resolves(target):
    spec = target.pihole
    answer = dns.query(spec.server, spec.port, spec.resolve_name, spec.protocol)
    assert answer.resolved, f"{spec.server}:{spec.port} did not resolve {answer}"


@pytest.mark.pihole
def test_dns_blocks(target):
    spec = target.pihole
    answer = dns.query(spec.server, spec.port, spec.blocked_name, spec.protocol)
    assert answer.blocked, f"{spec.server}:{spec.port} did not block {answer}"


@pytest.mark.pihole
def test_dns_service_active(target, cycle):
    assert cycle.guest().host.service(target.pihole.service).is_running
