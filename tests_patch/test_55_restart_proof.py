"""Stage 5, verify, in a patch run: proof that the VM really restarted, exactly once, through Proxmox."""

import pytest

pytestmark = [pytest.mark.stage("verify"), pytest.mark.patch]


@pytest.fixture
def restart(record, cycle):
    """The restart as recorded, with the VM as it is now (observed once, read-only)."""
    if record.restart is not None and record.restart.skipped:
        pytest.skip(record.restart.skipped)
    if record.restart is None or not record.restart.started:
        pytest.fail("the restart stage did not restart this VM")
    record.restart.after = record.once("after", cycle.identity)
    return record.restart


def test_boot_id_changed(restart):
    assert restart.after.boot_id != restart.before.boot_id


def test_qemu_process_replaced(restart):
    """A new QEMU process on the VM's own node: one on another node is a migration."""
    assert not restart.migrated(), restart.migrated()
    assert restart.after.qemu_pid and restart.after.qemu_pid != restart.before.qemu_pid


def test_started_exactly_once(restart):
    """QEMU's uptime matches our one start: not older (no restart), not younger (a second one)."""
    assert not restart.migrated(), restart.migrated()
    after = restart.after
    since_sent = after.at - restart.times["start_sent"]
    since_started = after.at - restart.times["started"]
    assert after.qemu_uptime is not None, "qm status --verbose shows no uptime"
    assert since_started - 5 <= after.qemu_uptime <= since_sent + 2, (
        f"QEMU uptime {after.qemu_uptime} s, but our qm start was sent {since_sent:.0f} s ago"
    )
