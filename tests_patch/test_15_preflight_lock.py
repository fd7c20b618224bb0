"""Stage 1, preflight, in a patch run: Proxmox holds no lock on the VM (backup, snapshot, migrate)."""

import pytest

pytestmark = [pytest.mark.stage("preflight"), pytest.mark.patch]


def test_vm_not_locked(cycle, target, options):
    lock = cycle.qm().config().get("lock")
    if options.skiplock:
        pytest.skip(f"--skiplock given (lock: {lock or 'none'})")
    assert lock is None, f"VM {target.vmid} is locked ({lock}) on {target.proxmox.name}"
