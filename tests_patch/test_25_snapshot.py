"""Stage 3, snapshot (patch): with --snapshot, a Proxmox snapshot of the VM before its update.

A VM whose snapshot fails is not updated (the patch stage refuses it, whatever tests ran)."""

import pytest

pytestmark = [pytest.mark.stage("snapshot"), pytest.mark.patch]


@pytest.fixture
def snapshot(record, cycle):
    """`qm snapshot` once per VM, on a fresh proof of its binding."""
    record.snapshot = record.once("snapshot", cycle.take_snapshot)
    if record.snapshot.skipped:
        pytest.skip(record.snapshot.skipped)
    return record.snapshot


def test_snapshot_taken(snapshot, target):
    assert snapshot.taken, (
        f"no snapshot of VM {target.vmid} on {target.proxmox.name}: {snapshot.error}; "
        "the VM is not updated"
    )


def test_snapshot_listed_by_proxmox(snapshot, cycle):
    names = [s.name for s in cycle.qm().snapshots()]
    assert snapshot.name in names, f"qm listsnapshot shows {names}, not {snapshot.name}"
