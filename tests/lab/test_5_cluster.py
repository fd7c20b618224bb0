"""End to end on the two-node lab cluster: HA, a migrated VM, pending changes, backups, quorum.

One patch run over four VMs, each with its own condition (faults and lab commands):
- pbs is HA-managed (fault ha-managed, the stand-in's CRM/LRM acting in 10 s rounds): it is
  patched and restarted through HA, each request waited for until HA and qm status agree;
- grafana was migrated to pve2 (fault migrated): refused, the message names pve2;
- ca has a pending config change (qm set --cores 2 while it runs): shown and refused, the
  change stays pending;
- pihole-backup's newest backup is 3 days old (--max-backup-age 24h): refused;
- pihole's cloud-init config changed since its guest was set up (fault cloudinit-changed): the
  new instance-id its restart would bring (new SSH host keys) is reported, nothing is touched.
Then a run without quorum (fault no-quorum) sends no mutating command at all, and a verify
run against the stand-in playing PVE 9 (PVELAB_PVE_VERSION=9: PVE 9's texts) passes.

Runs after test_4_snapshots.py (which leaves pbs patched and healthy, grafana with a broken
agent, ca running); nothing here resets a VM. test_report_e2e.py resets pbs (HA resource too).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from pvelab.fleet.lab import Lab
from pvelab.pve import backups, cluster
from pvepatch_runner import calls_of, plays_pve, pve_version, run_pvepatch

pytestmark = pytest.mark.lab
PBS, GRAFANA, CA, BACKUP = ("pbs", 101), ("grafana", 105), ("ca", 104), ("pihole-backup", 103)
PIHOLE = ("pihole", 102)
MUTATING = {"set", "shutdown", "stop", "start", "snapshot", "rollback", "delsnapshot", "migrate"}


def boot_id(lab: Lab, vm: str) -> str:
    _, out, _ = lab.guest_run(vm, "cat /proc/sys/kernel/random/boot_id")
    return out.strip()


def mutating(log: list[dict]) -> list[list[str]]:
    return [c["argv"] for c in log if c["argv"] and c["argv"][0] in MUTATING]


@pytest.fixture(scope="module")
def clab(lab: Lab) -> Lab:
    now = datetime.now(UTC)
    if f"vm:{PBS[1]}" not in lab.pve_run(["ha-manager", "config"]).stdout:  # (a rerun)
        lab.fault("ha-managed", PBS[0])
    if cluster.vm_node(lab.paths, GRAFANA[1]) == "pve":
        lab.fault("migrated", GRAFANA[0])
    cores = int(lab.qm("config", CA[1], "--current").stdout.split("cores: ")[1].split()[0])
    assert lab.qm("set", CA[1], "--cores", str(cores + 1)).ok  # stays pending while it runs
    if "cloudinit" not in lab.qm("config", PIHOLE[1]).stdout:
        lab.fault("cloudinit-changed", PIHOLE[0])
    for vm, age in (
        (PBS, timedelta(hours=2)),
        (CA, timedelta(hours=1)),
        (BACKUP, timedelta(days=3)),
        (PIHOLE, timedelta(hours=3)),
    ):
        backups.create(lab.paths, vm[1], now - age)
    yield lab
    if not cluster.quorate(lab.paths):
        cluster.set_quorum(lab.paths, True)


@pytest.fixture(scope="module")
def first(clab: Lab, tmp_path_factory) -> SimpleNamespace:
    before = boot_id(clab, PBS[0])
    mark = len(clab.qm_log())
    run = run_pvepatch(
        clab.inventory_path,
        "-m",
        "patch",
        "--limit",
        "pbs,grafana,ca,pihole-backup,pihole",
        "--max-backup-age",
        "24h",
        workdir=tmp_path_factory.mktemp("cluster1"),
    )
    return SimpleNamespace(run=run, boot_before=before, log=clab.qm_log()[mark:])


def test_the_ha_vm_is_restarted_through_ha(clab, first):
    vm, vmid = PBS
    assert f"{vm} (VM {vmid} on pve): ok" in first.run.output, first.run.output[-4000:]
    shutdown, start = calls_of(first.log, "shutdown", vmid), calls_of(first.log, "start", vmid)
    assert len(shutdown) == 1 and len(start) == 1
    assert calls_of(first.log, "stop", vmid) == []
    # qm only queued: each returned at once, and HA acted rounds later
    assert all(c["rc"] == 0 for c in shutdown + start)
    # the start was asked only after the HA stop was carried out
    ha = (clab.paths.log_dir / "ha.log").read_text()
    assert re.search(rf"service 'vm:{vmid}': state changed from 'request_stop' to 'stopped'", ha)
    stopped_at = first.log.index(shutdown[0])
    statuses = [c for c in first.log[stopped_at:] if c["argv"][:2] == ["status", str(vmid)]]
    assert statuses and first.log.index(statuses[0]) < first.log.index(start[0])
    assert boot_id(clab, vm) != first.boot_before  # one real restart
    out = clab.pve_run(["ha-manager", "status"]).stdout
    assert f"service vm:{vmid} (pve, started)" in out


def test_the_migrated_vm_is_refused_naming_its_node(first):
    vm, vmid = GRAFANA
    assert re.search(
        rf"{vm} \(VM {vmid} on pve\): FAILED \(preflight: test_vm_is_on_its_inventory_node: "
        rf"VM {vmid} is on node 'pve2', not on 'pve'",
        first.run.output,
    ), first.run.output[-4000:]


def test_the_pending_change_is_shown_and_not_applied(clab, first):
    vm, vmid = CA
    pending = clab.qm("pending", vmid).stdout  # still pending: it was not restarted
    cur, new = (re.search(rf"^{kind} cores: (\d+)$", pending, re.M) for kind in ("cur", "new"))
    assert cur and new, pending
    assert re.search(
        rf"{vm} \(VM {vmid} on pve\): FAILED \(preflight: test_no_pending_config_changes: its "
        r"Proxmox config has pending changes pvepatch did not make "
        rf"\(cores: {cur.group(1)} -> {new.group(1)}\)",
        first.run.output,
    ), first.run.output[-4000:]


def test_the_stale_backup_is_refused(first):
    vm, vmid = BACKUP
    assert re.search(
        rf"{vm} \(VM {vmid} on pve\): FAILED \(preflight: test_newest_backup_is_recent: its newest "
        rf"backup \(local:backup/vzdump-qemu-{vmid}-[0-9_-]+\.vma\.zst\) is 3 d old",
        first.run.output,
    ), first.run.output[-4000:]


def test_a_new_cloud_init_instance_id_is_reported_before_the_restart(clab, first):
    vm, vmid = PIHOLE
    _, guest_id, _ = clab.guest_run(vm, "cat /var/lib/cloud/data/instance-id")
    meta = clab.qm("cloudinit", "dump", vmid, "meta").stdout
    next_id = re.search(r"instance-id: (\S+)", meta).group(1)  # type: ignore[union-attr]
    assert next_id != guest_id.strip()
    assert (
        f"{vm} (VM {vmid} on pve): FAILED (preflight: test_cloud_init_instance_id_stays: its "
        "restart would give it a new cloud-init instance-id: its cloud-init config changed since "
        f"the guest was set up (instance-id {guest_id.strip()} now, {next_id} after a restart)"
    ) in first.run.output, first.run.output[-4000:]


def test_only_the_ha_vm_got_mutating_commands(first):
    assert {argv[1] for argv in mutating(first.log)} == {str(PBS[1])}, mutating(first.log)


def test_without_quorum_nothing_is_touched(clab, tmp_path_factory):
    clab.fault("no-quorum", None)
    mark = len(clab.qm_log())
    run = run_pvepatch(
        clab.inventory_path,
        "-m",
        "patch",
        "--limit",
        "pbs",
        workdir=tmp_path_factory.mktemp("noquorum"),
    )
    cluster.set_quorum(clab.paths, True)
    assert re.search(
        r"pbs \(VM 101 on pve\): FAILED \(preflight: test_cluster_is_quorate: the cluster of pve "
        r"has no quorum",
        run.output,
    ), run.output[-4000:]
    assert mutating(clab.qm_log()[mark:]) == []


def test_verify_against_pve_9_texts(clab, tmp_path_factory):
    with pve_version(clab, "9"):
        flavour = plays_pve(clab)
        run = run_pvepatch(
            clab.inventory_path,
            "-m",
            "verify",
            "--limit",
            "pbs",
            workdir=tmp_path_factory.mktemp("pve9"),
        )
    assert flavour == "9" and plays_pve(clab) == "8"
    assert run.rc == 0 and "pbs (VM 101 on pve): ok" in run.output, run.output[-4000:]
