"""Snapshots before the update, rollback on a bad one, pruning, and the verify listing, on the
fake fleet (its `qm snapshot|listsnapshot|rollback|delsnapshot` keep the guest's packages and
agent, and a rollback hard-stops a running VM, as PVE 8 does). The end-to-end proof with real
qcow2 snapshots and a real bad package is tests/lab/test_4_snapshots.py."""

from __future__ import annotations

import re
import time

import fakes
import pytest

pytest_plugins = ["pytester"]

FAST = ["--boot-timeout", "5", "-p", "no:html"]


@pytest.fixture
def fleet() -> fakes.FakeFleet:
    return fakes.standard_fleet()


def run(pytester, fleet, *args, inventory=fakes.STANDARD_INVENTORY):
    suite = fakes.stage_suite(pytester, inventory)
    return suite.runpytest(
        "--inventory", "inventory.yaml", *FAST, *args, plugins=[fakes.FleetPlugin(fleet)]
    )


def sent(fleet: fakes.FakeFleet, pattern: str) -> list[str]:
    return [c for _, c in fleet.commands if re.match(pattern, c)]


def first_index(fleet: fakes.FakeFleet, host: str, pattern: str) -> int:
    return next(i for i, (h, c) in enumerate(fleet.commands) if h == host and pattern in c)


def test_each_vm_is_snapshotted_right_before_its_update(pytester, fleet):
    result = run(pytester, fleet, "-m", "patch", "--snapshot")
    assert result.ret == 0, result.stdout.str()[-3000:]
    snaps = sent(fleet, r"qm snapshot ")
    assert [c.split()[2] for c in snaps] == ["101", "102", "103"]
    name = snaps[0].split()[3]
    assert re.fullmatch(r"pvepatch_\d{8}_\d{6}", name)
    assert all(c.split()[3] == name for c in snaps)  # one name per run
    assert "--description 'pvepatch: before patching pbs" in snaps[0]
    snapshot_at = next(
        i for i, (_, c) in enumerate(fleet.commands) if c.startswith("qm snapshot 101")
    )
    assert snapshot_at < first_index(fleet, "pbs", "dist-upgrade")
    for vm in fleet.vms.values():
        assert list(vm.snapshots) == [name]  # kept: the newest one (--snapshot-keep 1)


def test_a_failed_snapshot_stops_that_vm_before_anything_changes(pytester, fleet):
    fleet.vms["pbs"].snapshot_error = "snapshot feature is not available"
    result = run(pytester, fleet, "-m", "patch", "--snapshot")
    result.stdout.fnmatch_lines(
        ["*pbs (VM 101 on pve): FAILED (snapshot: test_snapshot_taken: no snapshot of VM 101*"
         "qm snapshot failed (exit 255): snapshot feature is not available*"]
    )  # fmt: skip
    pbs = [c for h, c in fleet.commands if h == "pbs"]
    assert not [c for c in pbs if "dist-upgrade" in c or "apt-get" in c and "update" in c]
    assert not sent(fleet, r"qm (shutdown|stop|start) 101")
    assert len(sent(fleet, r"qm shutdown 10[23]")) == 2  # the others went on
    assert fleet.vms["pbs"].packages["openssl"] == "3.0.1-1"


def test_without_the_snapshot_stage_the_update_still_waits_for_the_snapshot(pytester, fleet):
    """Safety is the action's: deselecting the snapshot stage does not skip the snapshot."""
    fleet.vms["pbs"].snapshot_error = "snapshot feature is not available"
    result = run(pytester, fleet, "-m", "patch", "--snapshot", "-k", "not snapshot")
    assert len(sent(fleet, r"qm snapshot ")) == 3
    assert not [c for h, c in fleet.commands if h == "pbs" and "dist-upgrade" in c]
    result.stdout.fnmatch_lines(
        ["*pbs (VM 101 on pve): FAILED (patch: *its snapshot failed, so nothing was changed in "
         "it: qm snapshot failed (exit 255): snapshot feature is not available*"]
    )  # fmt: skip
    assert fleet.vms["pihole"].packages["openssl"] == "3.0.2-1"


def test_a_bad_update_is_rolled_back_and_the_vm_checked_again(pytester, fleet):
    fleet.vms["pbs"].bad_update = True
    result = run(pytester, fleet, "-m", "patch", "--snapshot", "--rollback-on-failure")
    out = result.stdout.str()
    assert result.ret == 1, out[-3000:]
    name = sent(fleet, r"qm snapshot 101 ")[0].split()[3]
    assert sent(fleet, r"qm rollback ") == [f"qm rollback 101 {name}"]
    result.stdout.fnmatch_lines(
        [f"*pbs (VM 101 on pve): ROLLED BACK (patch: test_guest_agent_still_answers: the guest "
         f"agent of VM 101 stopped answering after the update*; rolled back to snapshot {name}, "
         "healthy again)*",
         "*pihole (VM 102 on pve): ok*"]
    )  # fmt: skip
    pbs = fleet.vms["pbs"]
    assert pbs.running and not pbs.agent_broken
    assert pbs.packages["openssl"] == "3.0.1-1"  # the version before the update
    # never restarted for the update; rolled back (a hard stop), then started on a proof
    assert sent(fleet, r"qm (shutdown|stop) 101") == []
    assert len(sent(fleet, r"qm start 101")) == 1
    assert fleet.max_down == 1
    assert list(pbs.snapshots) == [name]  # a failed VM keeps its snapshot
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 1, outcomes  # the check that found the bad update, only


def test_without_rollback_the_failed_vm_keeps_its_snapshot_and_the_command_is_printed(
    pytester, fleet
):
    fleet.vms["pbs"].bad_update = True
    result = run(pytester, fleet, "-m", "patch", "--snapshot")
    name = sent(fleet, r"qm snapshot 101 ")[0].split()[3]
    assert sent(fleet, r"qm rollback ") == []
    result.stdout.fnmatch_lines(
        ["*pbs (VM 101 on pve): FAILED (patch: test_guest_agent_still_answers*",
         f"*note: snapshot {name} kept; not rolled back (no --rollback-on-failure); to roll "
         f"back on pve: qm rollback 101 {name} --start 1*"]
    )  # fmt: skip
    assert fleet.vms["pbs"].agent_broken
    assert list(fleet.vms["pbs"].snapshots) == [name]


def test_older_pvepatch_snapshots_go_never_anyone_elses(pytester, fleet):
    pbs = fleet.vms["pbs"]
    state = (dict(pbs.packages), dict(pbs.updates), True, False)
    for name, desc, at in (
        ("pvepatch_20260101_000000", "pvepatch: before patching pbs", 1.0),
        ("pvepatch_20260201_000000", "pvepatch: before patching pbs", 2.0),
        ("pvepatch_20260301_000000", "made by hand, same prefix", 3.0),
        ("before_upgrade", "the admin's own", 4.0),
    ):
        pbs.snapshots[name] = {"description": desc, "snaptime": at, "state": state}
    result = run(pytester, fleet, "-m", "patch", "--snapshot", "--snapshot-keep", "2")
    assert result.ret == 0, result.stdout.str()[-3000:]
    name = sent(fleet, r"qm snapshot 101 ")[0].split()[3]
    assert sent(fleet, r"qm delsnapshot ") == ["qm delsnapshot 101 pvepatch_20260101_000000"]
    assert sorted(pbs.snapshots) == sorted(
        ["pvepatch_20260201_000000", "pvepatch_20260301_000000", "before_upgrade", name]
    )


def test_a_failed_vm_keeps_every_snapshot(pytester, fleet):
    pbs = fleet.vms["pbs"]
    pbs.bad_update = True
    state = (dict(pbs.packages), dict(pbs.updates), True, False)
    pbs.snapshots["pvepatch_20260101_000000"] = {
        "description": "pvepatch: before patching pbs", "snaptime": 1.0, "state": state
    }  # fmt: skip
    run(pytester, fleet, "-m", "patch", "--snapshot")
    assert sent(fleet, r"qm delsnapshot 101") == []
    assert len(pbs.snapshots) == 2


def test_verify_lists_snapshots_and_warns_about_old_ones_without_changing_any(pytester, fleet):
    pbs = fleet.vms["pbs"]
    old = time.strftime("pvepatch_%Y%m%d_%H%M%S", time.gmtime(time.time() - 20 * 86400))
    new = time.strftime("pvepatch_%Y%m%d_%H%M%S", time.gmtime(time.time() - 2 * 3600))
    for name in (old, new):
        pbs.snapshots[name] = {"description": "pvepatch: x", "snaptime": 1.0, "state": ()}
    result = run(pytester, fleet, "-m", "verify", "--snapshot-max-age", "14d")
    assert result.ret == 0, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(
        ["*mutating commands sent: 0*",
         f"*note: WARNING: snapshot {old} is 20 d old (over 14 d): delete it once the update "
         f"is known good: qm delsnapshot 101 {old}*",
         f"*pvepatch snapshots: {old} (20 d old), {new} (2 h old)*"]
    )  # fmt: skip
    assert f"WARNING: snapshot {new}" not in result.stdout.str()  # young enough
    assert sent(fleet, r"qm (snapshot|delsnapshot|rollback) ") == []
    assert len(sent(fleet, r"qm listsnapshot ")) >= 3


def test_a_host_can_opt_out_of_snapshots_in_the_inventory(pytester, fleet):
    inventory = fakes.STANDARD_INVENTORY.replace(
        "vmid: 101, proxmox_host: pve}", "vmid: 101, proxmox_host: pve, pvepatch_snapshot: false}"
    )
    result = run(pytester, fleet, "-m", "patch", "--snapshot", inventory=inventory)
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert [c.split()[2] for c in sent(fleet, r"qm snapshot ")] == ["102", "103"]


def test_a_group_can_opt_in(pytester, fleet):
    inventory = fakes.STANDARD_INVENTORY.replace(
        "    ubuntu_vms:\n", "    ubuntu_vms:\n      vars: {pvepatch_snapshot: true}\n"
    )
    result = run(pytester, fleet, "-m", "patch", inventory=inventory)
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert len(sent(fleet, r"qm snapshot ")) == 3


def test_a_bad_snapshot_variable_names_file_host_and_field(pytester, fleet):
    bad = fakes.STANDARD_INVENTORY.replace(
        "vmid: 102, proxmox_host: pve}", "vmid: 102, proxmox_host: pve, pvepatch_snapshot_keep: 0}"
    )
    result = run(pytester, fleet, "-m", "patch", inventory=bad)
    assert result.ret != 0
    result.stderr.fnmatch_lines(
        ["*inventory.yaml: host 'pihole': 'pvepatch_snapshot_keep' must be between 1 and 100*"]
    )
    assert fleet.commands == []
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--snapshot-keep", "0"], "--snapshot-keep must be between 1 and 100"),
        (["--snapshot-max-age", "soon"], "--snapshot-max-age must be a positive age*'soon'"),
    ],
)
def test_bad_snapshot_options_are_refused_before_anything(pytester, fleet, args, message):
    result = run(pytester, fleet, "-m", "patch", "--snapshot", *args)
    assert result.ret != 0
    result.stderr.fnmatch_lines([f"*pvepatch: {message}*"])
    assert fleet.commands == []


def test_a_failure_that_is_not_a_health_check_is_never_rolled_back(pytester, fleet):
    """Deselecting the restart makes its proof in the verify stage fail: not the update's
    fault, so the VM is not rolled back (the note says why and how to do it by hand)."""
    result = run(
        pytester, fleet, "-m", "patch", "--snapshot", "--rollback-on-failure",
        "--deselect", "tests_patch/test_40_restart.py", "--limit", "pbs",
    )  # fmt: skip
    assert sent(fleet, r"qm rollback ") == []
    result.stdout.fnmatch_lines(
        ["*pbs (VM 101 on pve): FAILED (verify: test_boot_id_changed*",
         "*not rolled back (its failure is not a health check after the update "
         "(test_boot_id_changed)); to roll back on pve: qm rollback 101 pvepatch_*"]
    )  # fmt: skip


def test_a_failed_apt_update_is_not_rolled_back(pytester, fleet):
    fleet.vms["pbs"].update_fails = True
    result = run(
        pytester, fleet, "-m", "patch", "--snapshot", "--rollback-on-failure", "--limit", "pbs"
    )
    assert sent(fleet, r"qm rollback ") == []
    result.stdout.fnmatch_lines(["*pbs (VM 101 on pve): FAILED (patch: test_apt_update_succeeded*"])


def test_the_vm_that_halts_the_run_is_still_rolled_back(pytester, fleet):
    fleet.vms["pbs"].bad_update = True
    result = run(
        pytester, fleet, "-m", "patch", "--snapshot", "--rollback-on-failure", "--max-fail", "1"
    )
    assert len(sent(fleet, r"qm rollback 101 ")) == 1
    result.stdout.fnmatch_lines(["*pbs (VM 101 on pve): ROLLED BACK*"])
    assert sent(fleet, r"qm snapshot 10[23]") == []  # halted: no other VM began
    assert not fleet.vms["pbs"].agent_broken


def test_a_stuck_vm_whose_rollback_fails_keeps_the_down_budget(pytester, fleet):
    """pbs comes back without SSH after its restart; its rollback fails: it still counts as
    down, so no other VM is taken down (--max-down 1)."""
    pbs = fleet.vms["pbs"]
    pbs.ssh_after_boot = False
    pbs.rollback_error = "VM is locked (backup)"
    result = run(pytester, fleet, "-m", "patch", "--snapshot", "--rollback-on-failure")
    assert len(sent(fleet, r"qm rollback 101 ")) == 1
    assert sent(fleet, r"qm (shutdown|stop) 10[23]") == []
    result.stdout.fnmatch_lines(
        ["*pbs (VM 101 on pve): FAILED (restart: test_ssh_back_with_new_boot*",
         "*pihole (VM 102 on pve): FAILED (restart: test_restart_allowed: *did not come back "
         "healthy and hold(s) the down budget*"]
    )  # fmt: skip


def test_no_snapshot_is_pruned_after_an_interrupt(pytester, fleet):
    """SIGTERM during pbs's start: pbs is brought back, but its older snapshot stays."""
    pbs = fleet.vms["pbs"]
    state = (dict(pbs.packages), dict(pbs.updates), True, False)
    pbs.snapshots["pvepatch_20260101_000000"] = {
        "description": "pvepatch: before patching pbs", "snaptime": 1.0, "state": state
    }  # fmt: skip
    pbs.sigterm_at = "start"
    run(pytester, fleet, "-m", "patch", "--snapshot")
    assert sent(fleet, r"qm delsnapshot ") == []
    assert "pvepatch_20260101_000000" in pbs.snapshots


def test_rollback_without_any_snapshot_is_refused_before_anything(pytester, fleet):
    result = run(pytester, fleet, "-m", "patch", "--rollback-on-failure")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*pvepatch: --rollback-on-failure needs --snapshot*"])
    assert fleet.commands == []


def test_a_vm_that_cannot_be_rolled_back_is_named_before_the_run(pytester, fleet):
    inventory = fakes.STANDARD_INVENTORY.replace(
        "vmid: 101, proxmox_host: pve}", "vmid: 101, proxmox_host: pve, pvepatch_snapshot: false}"
    )
    result = run(
        pytester, fleet, "-m", "patch", "--snapshot", "--rollback-on-failure", inventory=inventory
    )
    assert result.ret == 0, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(
        ["pvepatch: WARNING: pbs: rollback on failure is asked, but it gets no snapshot*"]
    )
    assert "WARNING: pihole:" not in result.stdout.str()
