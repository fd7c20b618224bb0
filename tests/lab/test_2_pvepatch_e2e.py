"""End to end: pvepatch against the lab's real VMs, through a real SSH Proxmox host and its qm.

The tests run in file order and share one lab: each leaves the fleet as the next one expects.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

import pytest
import yaml
from pvelab.fleet.lab import Lab
from pvelab.fleet.roster import by_name
from pvelab.fleet.sampler import sampling
from pvepatch_runner import PvepatchRun, calls_of, run_pvepatch, start_pvepatch, versions

pytestmark = pytest.mark.lab
# The snapshot and rollback stages' tests: skipped in a run without --snapshot.
SNAPSHOT_TESTS = {
    "test_snapshot_taken", "test_snapshot_listed_by_proxmox", "test_rollback_allowed",
    "test_rolled_back_to_the_snapshot", "test_started_after_rollback",
    "test_ssh_back_after_rollback", "test_agent_back_after_rollback",
    "test_healthy_after_rollback", "test_packages_as_before_the_update",
    "test_older_pvepatch_snapshots_deleted",
}  # fmt: skip
# What a run without --snapshot and --max-backup-age skips (and nothing else).
OPTIONAL_TESTS = SNAPSHOT_TESTS | {"test_newest_backup_is_recent"}

FLEET = {"pbs": 101, "pihole": 102, "pihole-backup": 103, "ca": 104, "grafana": 105}
PIHOLES = ["pihole", "pihole-backup"]
READ_ONLY_QM = {"status", "config", "list", "guest", "agent", "listsnapshot", "pending"}
MUTATING_QM = {"start", "stop", "shutdown", "reboot", "set", "unlock"}
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


def boot_id(lab: Lab, vm: str) -> str:
    rc, out, err = lab.guest_run(vm, "cat /proc/sys/kernel/random/boot_id")
    assert rc == 0, err
    return out.strip()


def qm_calls(
    lab: Lab, since: int = 0, verbs: set[str] | None = None, vmid: int | None = None
) -> list[dict]:
    calls = lab.qm_log()[since:]
    if verbs is not None:
        calls = [c for c in calls if c["argv"] and c["argv"][0] in verbs]
    if vmid is not None:
        calls = [c for c in calls if str(vmid) in c["argv"][:3]]
    return calls


def ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def down_windows(calls: list[dict]) -> dict[str, tuple[float, float]]:
    """Per vmid: from the start of its shutdown/stop to the end of its start."""
    windows: dict[str, tuple[float, float]] = {}
    for call in calls:
        verb, vmid = call["argv"][0], call["argv"][1] if len(call["argv"]) > 1 else ""
        if verb in {"shutdown", "stop"} and vmid not in windows:
            windows[vmid] = (ts(call["start"]), float("inf"))
        elif verb == "start" and vmid in windows:
            windows[vmid] = (windows[vmid][0], ts(call["end"]))
    return windows


def patch(lab: Lab, workdir: Path, *args: str) -> PvepatchRun:
    began = time.monotonic()
    result = run_pvepatch(lab.inventory_path, "-m", "patch", *args, workdir=workdir)
    TIMINGS[" ".join(("patch", *args))] = time.monotonic() - began
    return result


# --- 1. the healthy fleet ---------------------------------------------------------------------


def test_patch_healthy_fleet(lab, workdir):
    """The whole cycle on every VM, five xdist workers, the default budget (--max-down 1): apt
    overlaps, restarts do not. Down is sampled every half second by the lab itself (QEMU running
    and sshd answering), independently of what pvepatch believes. (Serial runs: the fault tests
    below, and test_report_e2e.py.)"""
    before = {vm: (versions(lab, vm), boot_id(lab, vm)) for vm in FLEET}
    pids = {vm: lab.qemu_pid(by_name(vm)) for vm in FLEET}
    mark = len(lab.qm_log())

    with sampling(lab, 0.5) as samples:
        result = patch(lab, workdir, "-n", "5")
    print("; ".join(samples.summary()))

    assert result.rc == 0, result.output[-3000:]
    assert samples.max_down() == 1, samples.summary()
    assert not samples.ever_down_together(PIHOLES), samples.summary()
    for vm in FLEET:
        outcomes = result.of_vm(vm)
        assert outcomes and all(v == "passed" for v in outcomes.values() if v != "skipped")
        skipped = {t for t, v in outcomes.items() if v == "skipped"}
        assert skipped == OPTIONAL_TESTS, (vm, outcomes)  # only the options' tests skip
        now = versions(lab, vm)
        upgraded = {p for p in now if before[vm][0].get(p) not in (None, now[p])}
        assert {"pvelab-kernel-sim", "pvelab-conffile", "pvelab-motd"} <= upgraded, (vm, upgraded)
        assert boot_id(lab, vm) != before[vm][1]
        assert lab.qemu_pid(by_name(vm)) not in (None, pids[vm]), f"{vm}: QEMU process not replaced"
        rc, out, _ = lab.guest_run(vm, "apt-get -s dist-upgrade | grep -c ^Inst || true")
        assert out.strip() == "0", f"{vm}: still upgradable"
    for vm, vmid in FLEET.items():
        assert len(qm_calls(lab, mark, {"shutdown"}, vmid)) == 1, vm
        assert len(qm_calls(lab, mark, {"start"}, vmid)) == 1, vm
        assert not qm_calls(lab, mark, {"stop", "reboot"}, vmid), vm
    windows = sorted(down_windows(qm_calls(lab, mark)).values())
    assert len(windows) == len(FLEET)
    for (_, a_end), (b_start, _) in zip(windows, windows[1:], strict=False):
        assert a_end < b_start, "two VMs were down at the same time"
    for vm in ("pihole", "pihole-backup"):
        assert result.of_vm(vm)["test_dns_resolves"] == "passed"
        assert result.of_vm(vm)["test_dns_blocks"] == "passed"


def test_conffile_kept_and_reboot_recorded(lab):
    rc, out, _ = lab.guest_run("pbs", "cat /etc/pvelab/conffile.conf; ls /etc/pvelab/")
    assert rc == 0
    assert "local" in out.lower(), f"the locally modified conffile was replaced: {out}"


def test_verify_after_patch_is_read_only(lab, workdir):
    before = {vm: (versions(lab, vm), boot_id(lab, vm)) for vm in FLEET}
    mark = len(lab.qm_log())

    result = run_pvepatch(lab.inventory_path, "-m", "verify", workdir=workdir)

    assert result.rc == 0, result.output[-3000:]
    assert "mutating commands sent: 0" in result.output
    new = qm_calls(lab, mark)
    assert new and {c["argv"][0] for c in new} <= READ_ONLY_QM, {c["argv"][0] for c in new}
    for vm in FLEET:
        assert (versions(lab, vm), boot_id(lab, vm)) == before[vm], vm
        assert "test_dns_resolves" in result.of_vm(vm) or vm not in {"pihole", "pihole-backup"}


# --- 2. the fleet at once: pytest-xdist workers and two runs under one down budget ----------------
# Down is sampled every half second by the lab itself (pvelab.fleet.sampler: QEMU running and sshd
# answering), independently of what pvepatch believes. The fleet is patched already: these runs
# restart every VM (one restart per VM per run) and change no package.


def test_verify_in_parallel_is_read_only(lab, workdir):
    mark = len(lab.qm_log())
    result = run_pvepatch(lab.inventory_path, "-m", "verify", "-n", "5", workdir=workdir)
    assert result.rc == 0, result.output[-3000:]
    assert "mutating commands sent: 0" in result.output
    new = qm_calls(lab, mark)
    assert new and {c["argv"][0] for c in new} <= READ_ONLY_QM, {c["argv"][0] for c in new}
    assert all(result.failed(vm) == set() for vm in FLEET)


def test_parallel_patch_never_exceeds_the_budget(lab, workdir):
    """Five workers, --max-down 2 (--max-down 1: the first patch run, above)."""
    budget = 2
    mark = len(lab.qm_log())
    with sampling(lab, 0.5) as samples:
        began = time.monotonic()
        result = run_pvepatch(
            lab.inventory_path, "-m", "patch", "-n", "5", "--max-down", str(budget),
            workdir=workdir,
        )  # fmt: skip
        took = time.monotonic() - began
    print(f"TIMING patch -n 5 --max-down {budget}: {took:.0f} s; " + "; ".join(samples.summary()))
    assert result.rc == 0, result.output[-4000:]
    for vm, vmid in FLEET.items():
        assert result.failed(vm) == set(), (vm, result.of_vm(vm))
        assert len(calls_of(lab.qm_log()[mark:], "shutdown", vmid)) == 1, vm  # one restart per VM
        assert len(calls_of(lab.qm_log()[mark:], "start", vmid)) == 1, vm
    assert 0 < samples.max_down() <= budget, samples.summary()
    assert not samples.ever_down_together(PIHOLES), samples.summary()
    assert "pvepatch" in result.output and "5 workers" in result.output


def test_two_runs_at_once_share_the_budget(lab, tmp_path):
    """Two controllers against the same Proxmox host, each with --max-down 1: together never
    more than one VM down, and the Pi-hole pair (split between the runs) never both. Both are
    asked to patch pbs: the run that reaches it first takes its lock on the host, and the other
    leaves it alone, naming the run that holds it (one restart of pbs, not two)."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    mark = len(lab.qm_log())
    with sampling(lab, 0.5) as samples:
        # `pihole` alone is also the name of the Pi-hole group: the host without its partner
        first = start_pvepatch(
            lab.inventory_path, one, "-m", "patch", "--limit", "pbs,ca,pihole,!pihole-backup",
            "-n", "3",
        )  # fmt: skip
        second = start_pvepatch(
            lab.inventory_path, two, "-m", "patch", "--limit", "pihole-backup,grafana,pbs",
            "-n", "2",
        )  # fmt: skip
        out_first, _ = first.communicate(timeout=1500)
        out_second, _ = second.communicate(timeout=1500)
    print(out_first[-3000:], out_second[-3000:], "; ".join(samples.summary()), sep="\n")
    runs = [
        (first, out_first, ("ca", "pihole")),
        (second, out_second, ("pihole-backup", "grafana")),
    ]
    for _, out, others in runs:
        for vm in others:
            assert f"{vm} (VM {FLEET[vm]} on pve): ok" in out, out[-3000:]
    (loser, out_loser, _), (winner, out_winner, _) = sorted(runs, key=lambda r: -r[0].returncode)
    assert winner.returncode == 0 and loser.returncode == 1, (first.returncode, second.returncode)
    assert "pbs (VM 101 on pve): ok" in out_winner
    assert re.search(
        r"pbs \(VM 101 on pve\): FAILED \(guest_agent: .*another pvepatch run is changing VM "
        r"101: its lock on pve is held by pbs \(run \S+, pid \d+ on ",
        out_loser,
    ), out_loser[-3000:]
    assert samples.max_down() == 1, samples.summary()
    assert not samples.ever_down_together(PIHOLES), samples.summary()
    # one of them waited for the other, and said who held the slot
    assert "waiting for a down slot" in out_first + out_second
    assert "pve: 1 of 1 down" in out_first + out_second
    for vm, vmid in FLEET.items():  # each VM in exactly one of the runs: one restart each
        assert len(calls_of(lab.qm_log()[mark:], "shutdown", vmid)) == 1, vm


# --- 3. bad input and wrong bindings -----------------------------------------------------------


def edited_inventory(lab: Lab, workdir: Path, name: str, edit) -> Path:
    data = yaml.safe_load(lab.inventory_path.read_text())
    edit(data["all"]["children"]["ubuntu_vms"]["hosts"])
    path = workdir / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_missing_vmid_aborts_before_any_connection(lab, workdir):
    inventory = edited_inventory(
        lab, workdir, "no-vmid.yaml", lambda hosts: hosts["pbs"].pop("vmid")
    )
    mark = len(lab.qm_log())
    result = run_pvepatch(inventory, "-m", "patch", workdir=workdir)
    assert result.rc != 0
    assert f"{inventory}: host 'pbs': 'vmid' is missing" in result.output
    assert lab.qm_log()[mark:] == []


def test_duplicate_vmid_aborts_before_any_connection(lab, workdir):
    inventory = edited_inventory(
        lab, workdir, "dup-vmid.yaml", lambda hosts: hosts["pbs"].update(vmid=105)
    )
    mark = len(lab.qm_log())
    result = run_pvepatch(inventory, "-m", "patch", workdir=workdir)
    assert result.rc != 0
    assert "host 'pbs': 'vmid' 105 on Proxmox host 'pve' is also the vmid of 'grafana'" in (
        result.output
    )
    assert lab.qm_log()[mark:] == []


def test_wrong_binding_is_refused_before_any_restart(lab, workdir):
    """pbs carries grafana's vmid (grafana is not in this inventory): the guest SSH reaches is not
    the VM that vmid names, so pvepatch refuses before touching either."""

    def swap(hosts):
        hosts.pop("grafana")
        hosts["pbs"]["vmid"] = 105

    inventory = edited_inventory(lab, workdir, "wrong-vmid.yaml", swap)
    mark = len(lab.qm_log())
    result = run_pvepatch(inventory, "-m", "patch", "--limit", "pbs", workdir=workdir)
    assert result.rc != 0
    failed = result.failed("pbs")
    assert {"test_vmid_binding_by_mac", "test_vmid_binding_by_agent_hostname"} <= failed
    assert "wrong binding" in result.message("test_vmid_binding_by_mac", "pbs")
    assert not qm_calls(lab, mark, MUTATING_QM)


@pytest.mark.parametrize(
    "selection",
    [
        ["-m", "patch and not verify"],
        ["-m", "patch", "-k", "restart"],
        ["-m", "patch", "tests_patch/test_40_restart.py::test_vm_shut_down[pbs]"],
    ],
    ids=["patch-and-not-verify", "k-restart", "node-id"],
)
def test_wrong_binding_is_refused_whatever_the_selection(lab, workdir, selection):
    """The preflight is not selected: the restart proves the binding itself, against the real
    stand-in qm and guests, and nothing reaches grafana (vmid 105)."""

    def swap(hosts):
        hosts.pop("grafana")
        hosts["pbs"]["vmid"] = 105

    inventory = edited_inventory(lab, workdir, "wrong-vmid.yaml", swap)
    mark = len(lab.qm_log())
    pid = lab.qemu_pid(by_name("grafana"))
    result = run_pvepatch(inventory, *selection, "--limit", "pbs", workdir=workdir)
    assert result.rc != 0
    # the first action selected refuses: the apt run (a change inside the guest) or the shutdown
    assert re.search(r"refused (patch|qm shutdown): wrong binding: VM 105 on pve", result.output)
    assert not qm_calls(lab, mark, MUTATING_QM), "a mutating qm command was sent"
    assert lab.qemu_pid(by_name("grafana")) == pid


# --- 3. the seed's failure table, one fault per VM in one run ---------------------------------


def test_never_shut_down_while_apt_runs(lab, workdir):
    """A real apt-get holds the dpkg lock in pihole-backup (~75 s, as unattended-upgrades would):
    its restart, selected alone (the patch stage that would wait for the lock deselected), is
    refused right before the shutdown. Nothing reaches Proxmox for it; the guest and its apt run
    on, into the next test (its dpkg-lock fault)."""
    lab.fault("dpkg-lock", "pihole-backup")
    boot = boot_id(lab, "pihole-backup")
    mark = len(lab.qm_log())

    result = patch(lab, workdir, "--limit", "pihole-backup", "-k", "restart")

    assert result.rc != 0
    failed = result.failed("pihole-backup")
    assert "test_restart_allowed" in failed, result.of_vm("pihole-backup")
    why = result.message("test_restart_allowed", "pihole-backup")
    assert "apt/dpkg is running in the guest" in why, why
    assert not qm_calls(lab, mark, MUTATING_QM, 103)
    assert boot_id(lab, "pihole-backup") == boot
    rc, _, _ = lab.guest_run("pihole-backup", "systemctl is-active --quiet pvelab-dpkg-lock")
    assert rc == 0, "the lab's apt run should still hold the lock for the next test"


def test_faults_fail_only_their_vm(lab, workdir):
    lab.fault("agent-missing", "pbs")
    lab.fault("dns-down", "pihole")
    # pihole-backup: the dpkg lock is still held by the apt run of the test above
    lab.fault("lock-backup", "ca")
    lab.fault("sshd-broken", "grafana")
    mark = len(lab.qm_log())

    # --max-down 2: pihole, whose DNS stays down after its restart, counts as down until the
    # run ends; grafana still gets its restart beside it. One VM boots at a time here: 100 s
    # is twice the slowest boot seen under CI load (pihole and grafana wait it out in full).
    result = patch(lab, workdir, "--boot-timeout", "100", "--max-down", "2")

    assert result.rc != 0
    # agent missing: installed, enabled in the config, and the VM passes
    assert result.failed("pbs") == set(), result.of_vm("pbs")
    assert qm_calls(lab, mark, {"set"}, 101)
    rc, out, _ = lab.guest_run("pbs", "systemctl is-active qemu-guest-agent")
    assert out.strip() == "active"
    # DNS down: only the DNS checks of that VM fail
    assert result.failed("pihole") == {
        "test_dns_resolves",
        "test_dns_blocks",
        "test_dns_service_active",
    }
    # dpkg lock held by another process: the patch waits for it; but its redundancy partner
    # pihole does not serve DNS, so it is not taken down (checked right before the shutdown)
    assert result.failed("pihole-backup") == {"test_restart_allowed"}, result.of_vm("pihole-backup")
    # (refused at once: pihole, not back healthy, holds the group until the run ends)
    assert "redundancy partner pihole is not healthy" in result.message(
        "test_restart_allowed", "pihole-backup"
    )
    assert not qm_calls(lab, mark, MUTATING_QM, 103)
    rc, out, _ = lab.guest_run("pihole-backup", "dpkg --audit; echo audit-rc=$?")
    assert out.strip() == "audit-rc=0"  # its patch finished cleanly
    # lock: backup: refused, no shutdown on the host
    assert "test_vm_not_locked" in result.failed("ca")
    assert not qm_calls(lab, mark, MUTATING_QM, 104)
    # SSH that does not come back: that VM fails, restarted once, not retried, still running
    assert "test_ssh_back_with_new_boot" in result.failed("grafana")
    assert len(qm_calls(lab, mark, {"shutdown"}, 105)) == 1
    assert len(qm_calls(lab, mark, {"start"}, 105)) == 1
    assert lab.qm("status", 105).stdout.strip() == "status: running"


def test_skiplock_restarts_a_locked_vm(lab, workdir):
    mark = len(lab.qm_log())
    result = patch(lab, workdir, "--limit", "ca", "--skiplock")
    assert result.rc == 0, result.output[-3000:]
    shutdowns = qm_calls(lab, mark, {"shutdown"}, 104)
    assert len(shutdowns) == 1 and "--skiplock" in shutdowns[0]["argv"]
    assert len(qm_calls(lab, mark, {"start"}, 104)) == 1


def test_ignored_clean_shutdown_fails_without_power_off(lab, workdir):
    lab.fault("ignore-shutdown", "pbs")
    mark = len(lab.qm_log())
    result = patch(lab, workdir, "--limit", "pbs", "--shutdown-timeout", "20")
    assert "test_vm_shut_down" in result.failed("pbs")
    assert len(qm_calls(lab, mark, {"shutdown"}, 101)) == 1
    assert not qm_calls(lab, mark, {"stop", "start"}, 101)
    assert lab.qm("status", 101).stdout.strip() == "status: running"


def test_hard_stop_fallback_stops_and_starts(lab, workdir):
    mark = len(lab.qm_log())
    result = patch(
        lab, workdir, "--limit", "pbs", "--shutdown-timeout", "20", "--hard-stop-fallback"
    )
    assert result.rc == 0, result.output[-3000:]
    verbs = [c["argv"][0] for c in qm_calls(lab, mark, {"shutdown", "stop", "start"}, 101)]
    assert verbs == ["shutdown", "stop", "start"]


def test_missing_virtio_port_and_half_configured_dpkg(lab, workdir):
    # pihole's DNS back (dns-down, above): else its partner pihole-backup is not taken down
    rc, _, err = lab.guest_run("pihole", "systemctl unmask dnsmasq && systemctl start dnsmasq")
    assert rc == 0, err
    lab.fault("virtio-missing", "pihole-backup")
    lab.fault("dpkg-halfconf", "pihole")
    mark = len(lab.qm_log())
    result = patch(lab, workdir, "--limit", "pihole,pihole-backup", "--boot-timeout", "120")
    assert "test_virtio_port_back" in result.failed("pihole-backup")
    assert "test_ssh_back_with_new_boot" not in result.failed("pihole-backup")
    assert "test_dpkg_audit_clean" in result.failed("pihole")
    assert not qm_calls(lab, mark, MUTATING_QM, 102)


def test_report_timings():
    """Not a check: prints the measured durations for the README."""
    for name, seconds in TIMINGS.items():
        print(f"TIMING {name}: {seconds:.0f} s")
    assert TIMINGS
