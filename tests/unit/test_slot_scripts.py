"""The slot and VM-lock scripts (pvepatch.cycle.slots), run by /bin/sh on this machine as the
Proxmox host runs them: taken, busy with the holder named, given back, and a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from pvepatch.cycle.slots import Busy, Slot, SlotError, SlotTable, local_opener


@pytest.fixture
def table(tmp_path: Path) -> SlotTable:
    return SlotTable("pve", str(tmp_path / "locks"), local_opener)


def test_a_vm_lock_is_one_holders_until_given_back(table):
    first = table.try_lock_vm(101, "pbs (run a, pid 1 on ctl1, since 10:00:00)")
    assert isinstance(first, Slot) and first.alive()
    second = table.try_lock_vm(101, "pbs (run b)")
    assert isinstance(second, Busy)
    assert second.why == "held by pbs (run a, pid 1 on ctl1, since 10:00:00)"
    other_vm = table.try_lock_vm(102, "pihole (run b)")  # one lock per VM
    assert isinstance(other_vm, Slot)
    first.release()
    assert not first.alive()
    again = table.try_lock_vm(101, "pbs (run b)")
    assert isinstance(again, Slot)
    again.release()
    other_vm.release()


@pytest.mark.parametrize("name", ["vm-101", "admit.lock", "group-dns"])
def test_a_lock_file_that_cannot_be_opened_is_a_clear_error(table, name):
    """dash exits on a failed redirection of a special built-in (`exec`, `:`): the script
    checks with `true` first, so the error says which file."""
    Path(table.directory).mkdir(parents=True)
    (Path(table.directory) / name).mkdir()  # a directory where the lock file should be
    with pytest.raises(SlotError, match=f"ERROR cannot open {table.directory}/{name}"):
        if name == "vm-101":
            table.try_lock_vm(101, "pbs (run a)")
        else:
            table.try_take(1, "dns", "pihole (run a)")
