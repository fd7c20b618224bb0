"""Stage 5, verify, in a patch run: proof that the VM really restarted, exactly once, through Proxmox."""

import time

import pytest

pytestmark = [pytest.mark.stage("verify"), pytest.mark.patch]


@pytest.fixture
def restarted(record):
    """The VM's record, once the restart stage has restarted it."""
    if record.restart is None or not record.restart.started:
        pytest.fail("the restart stage did not restart this VM")
    return record


def test_boot_id_changed(restarted, cycle):
    now = cycle.guest().boot_id()
    restarted.facts["boot_id_after"] = now
    restarted.facts["kernel_after"] = cycle.guest().kernel()
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
