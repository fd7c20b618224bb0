"""End to end: a snapshot before each update, real qcow2 snapshots, and a real bad package.

grafana has pvelab-bad-update 1.0-1; the lab repository offers 1.1-1, whose postinst masks the
guest agent (fault bad-update). ca has a raw data disk, which Proxmox cannot snapshot (fault
snapshot-unsupported). pbs is fresh. With --snapshot --rollback-on-failure: pbs is patched and
keeps its snapshot, grafana is rolled back to the package versions it had and is healthy, ca is
not patched at all. Then, without the rollback flag and against the stand-in playing PVE 9,
grafana ends FAILED with its snapshot kept and the rollback command named; and -m verify warns about old snapshots without touching any.

Runs after test_3_fleet.py, which leaves ca running and healthy (slow to shut down, which this
module never asks of it); pbs and grafana are reset here.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from pvelab.fleet.lab import Lab
from pvepatch.audit import ledger
from pvepatch_runner import calls_of, plays_pve, pve_version, run_pvepatch, versions

pytestmark = pytest.mark.lab
PBS, CA, GRAFANA = ("pbs", 101), ("ca", 104), ("grafana", 105)
SNAPSHOT = re.compile(r"pvepatch_\d{8}_\d{6}")


def agent_state(lab: Lab, vm: str) -> str:
    _, out, _ = lab.guest_run(vm, "systemctl is-active qemu-guest-agent; true")
    return out.strip()


def seconds(call: dict) -> float:
    return (
        datetime.fromisoformat(call["end"]) - datetime.fromisoformat(call["start"])
    ).total_seconds()


def snapshots(lab: Lab, vmid: int) -> list[str]:
    out = lab.qm("listsnapshot", vmid).stdout
    return [m.group(0) for m in SNAPSHOT.finditer(out)]


@pytest.fixture(scope="module")
def slab(lab: Lab) -> Lab:
    lab.reset([PBS[0], GRAFANA[0]], log=lambda line: print(f"[pvelab] {line}", flush=True))
    lab.fault("bad-update", GRAFANA[0])
    lab.fault("snapshot-unsupported", CA[0])
    return lab


@pytest.fixture(scope="module")
def first(slab: Lab, tmp_path_factory) -> SimpleNamespace:
    """One run over the three: --snapshot --rollback-on-failure."""
    before = {vm: versions(slab, vm) for vm in (PBS[0], GRAFANA[0], CA[0])}
    mark = len(slab.qm_log())
    run = run_pvepatch(
        slab.inventory_path,
        "-m",
        "patch",
        "--limit",
        "pbs,ca,grafana",
        "--snapshot",
        "--rollback-on-failure",
        workdir=tmp_path_factory.mktemp("snap1"),
    )
    return SimpleNamespace(run=run, before=before, log=slab.qm_log()[mark:])


def test_the_fresh_vm_is_snapshotted_before_its_update_and_patched(slab, first):
    vm, vmid = PBS
    assert "pbs (VM 101 on pve): ok" in first.run.output, first.run.output[-4000:]
    snap = calls_of(first.log, "snapshot", vmid)
    assert len(snap) == 1 and snap[0]["rc"] == 0
    name = snap[0]["argv"][2]
    assert SNAPSHOT.fullmatch(name)
    assert snapshots(slab, vmid) == [name]  # kept: --snapshot-keep 1
    assert versions(slab, vm)["pvelab-motd"] == "1.1-1"  # patched after it
    print(f"qm snapshot of running pbs: {seconds(snap[0]):.1f} s")


def test_a_bad_update_is_rolled_back_to_the_old_package_and_healthy(slab, first):
    vm, vmid = GRAFANA
    out = first.run.output
    assert re.search(
        r"grafana \(VM 105 on pve\): ROLLED BACK \(patch: test_guest_agent_still_answers: the "
        r"guest agent of VM 105 stopped answering after the update.*; rolled back to snapshot "
        r"pvepatch_\d{8}_\d{6}, healthy again\)",
        out,
    ), out[-4000:]
    name = calls_of(first.log, "snapshot", vmid)[0]["argv"][2]
    rollback = calls_of(first.log, "rollback", vmid)
    assert len(rollback) == 1 and rollback[0]["rc"] == 0 and rollback[0]["argv"][2] == name
    now = versions(slab, vm)
    assert now["pvelab-bad-update"] == "1.0-1"  # the disk really went back
    assert now == first.before[vm]  # every package as before the update
    assert agent_state(slab, vm) == "active"
    assert slab.qm("guest", "cmd", vmid, "ping", check=False).ok
    assert slab.qm("status", vmid).stdout.strip() == "status: running"
    assert snapshots(slab, vmid) == [name]  # a failed VM keeps its snapshot
    assert not calls_of(first.log, "shutdown", vmid)  # its only restart was the rollback's
    for test in ("test_rolled_back_to_the_snapshot", "test_healthy_after_rollback",
                 "test_packages_as_before_the_update"):  # fmt: skip
        assert first.run.of_vm(vm)[test] == "passed", first.run.message(test, vm)
    start = calls_of(first.log, "start", vmid)
    print(f"qm rollback of running grafana: {seconds(rollback[0]):.1f} s; qm start after it: "
          f"{seconds(start[0]):.1f} s")  # fmt: skip


def test_a_vm_whose_snapshot_fails_is_not_patched_at_all(slab, first):
    vm, vmid = CA
    out = first.run.output
    assert re.search(
        r"ca \(VM 104 on pve\): FAILED \(snapshot: test_snapshot_taken: .*qm snapshot failed "
        r"\(exit 255\): snapshot feature is not available",
        out,
    ), out[-4000:]
    assert versions(slab, vm) == first.before[vm]
    assert not calls_of(first.log, "shutdown", vmid) and not calls_of(first.log, "stop", vmid)
    assert snapshots(slab, vmid) == []


def test_the_rollback_counted_as_down_for_the_budget(first):
    """pbs's restart and grafana's rollback-and-start never overlap (--max-down 1)."""

    def window(verb: str, vmid: int) -> tuple[datetime, datetime]:
        down = calls_of(first.log, verb, vmid)[0]
        up = calls_of(first.log, "start", vmid)[-1]
        return datetime.fromisoformat(down["start"]), datetime.fromisoformat(up["end"])

    pbs, grafana = window("shutdown", PBS[1]), window("rollback", GRAFANA[1])
    assert pbs[1] <= grafana[0] or grafana[1] <= pbs[0], (pbs, grafana)


@pytest.fixture(scope="module")
def second(slab: Lab, first, tmp_path_factory) -> SimpleNamespace:
    """grafana again, without --rollback-on-failure: the bad update stays. The stand-in plays
    PVE 9 for this run: the snapshot of a running VM with its agent enabled, and the agent's
    errors, are where PVE 9's texts differ from 8.4's."""
    mark = len(slab.qm_log())
    workdir = tmp_path_factory.mktemp("snap2")
    with pve_version(slab, "9"):
        flavour = plays_pve(slab)
        run = run_pvepatch(
            slab.inventory_path,
            "-m",
            "patch",
            "--limit",
            "grafana",
            "--snapshot",
            f"--html={workdir / 'snap2.html'}",
            workdir=workdir,
        )
    assert flavour == "9" and plays_pve(slab) == "8"
    records = ledger.read(workdir / "snap2.jsonl")
    return SimpleNamespace(run=run, log=slab.qm_log()[mark:], records=records)


def test_the_snapshot_under_pve_9_printed_pve_9s_text(second):
    """qemu-server 9 prints `internal qemu snapshot` for a running VM's qcow2 disk; 8.4 does
    not: the run really met PVE 9's texts, and took the snapshot."""
    sent = [
        c
        for r in second.records
        if r.get("vm") == GRAFANA[0]
        for c in r.get("qm_commands") or []
        if c["command"].startswith(f"qm snapshot {GRAFANA[1]} ")
    ]
    assert len(sent) == 1 and sent[0]["rc"] == 0, sent
    assert "internal qemu snapshot" in sent[0]["stdout_tail"], sent[0]


def test_without_the_rollback_flag_the_vm_fails_with_its_snapshot_named(slab, second):
    vm, vmid = GRAFANA
    out = second.run.output
    assert second.run.rc == 1
    assert "grafana (VM 105 on pve): FAILED (patch: test_guest_agent_still_answers" in out
    name = calls_of(second.log, "snapshot", vmid)[0]["argv"][2]
    assert f"to roll back on pve: qm rollback 105 {name} --start 1" in out
    assert not calls_of(second.log, "rollback", vmid)
    assert versions(slab, vm)["pvelab-bad-update"] == "1.1-1"
    assert agent_state(slab, vm) != "active"
    assert name in snapshots(slab, vmid) and len(snapshots(slab, vmid)) == 2  # both kept


def test_verify_warns_about_old_snapshots_and_changes_none(slab, first, tmp_path: Path):
    mark = len(slab.qm_log())
    run = run_pvepatch(
        slab.inventory_path,
        "-m",
        "verify",
        "--limit",
        "pbs",
        "--snapshot-max-age",
        "1s",
        workdir=tmp_path,
    )
    name = snapshots(slab, PBS[1])[0]
    assert run.rc == 0, run.output[-3000:]
    assert f"WARNING: snapshot {name} is" in run.output
    assert f"qm delsnapshot 101 {name}" in run.output
    verbs = {c["argv"][0] for c in slab.qm_log()[mark:]}
    assert verbs <= {"status", "config", "guest", "listsnapshot", "pending"}, verbs
    assert snapshots(slab, PBS[1]) == [name]
