"""The cluster's say before pvepatch touches a VM, on the fake fleet: where the VM is
(/cluster/resources), HA, quorum (pvecm status), pending config changes (qm pending), and the
newest backup (--max-backup-age). The end-to-end proof is tests/lab/test_5_cluster.py."""

from __future__ import annotations

import re
import threading
import time

import fakes
import pytest
from pvepatch.cycle.slots import SlotTable, local_opener

pytest_plugins = ["pytester"]

FAST = ["--boot-timeout", "5", "-p", "no:html"]
MUTATING = r"qm (set|shutdown|stop|start|snapshot|rollback|delsnapshot) "


@pytest.fixture
def fleet() -> fakes.FakeFleet:
    return fakes.standard_fleet()


def run(pytester, fleet, *args):
    if not (pytester.path / "tests_patch").exists():
        fakes.stage_suite(pytester, fakes.STANDARD_INVENTORY)
    return pytester.runpytest(
        "--inventory", "inventory.yaml", *FAST, *args, plugins=[fakes.FleetPlugin(fleet)]
    )


def touched(fleet: fakes.FakeFleet, vm: str) -> list[str]:
    """Every command that changed VM `vm`: mutating qm commands for it, apt or systemctl in it."""
    vmid = fleet.vms[vm].vmid
    qm = [c for h, c in fleet.commands if re.match(MUTATING + str(vmid), c)]
    guest = [
        c
        for h, c in fleet.commands
        if h == vm and ("apt-get" in c or "systemctl start" in c or "systemd-run" in c)
    ]
    return qm + guest


def assert_untouched_others_patched(fleet, vm):
    assert touched(fleet, vm) == []
    for other in fleet.vms:
        if other != vm:
            assert fleet.vms[other].packages["openssl"] == "3.0.2-1", other


def test_a_migrated_vm_is_refused_naming_its_node(pytester, fleet):
    fleet.vms["pbs"].node = "pve2"
    result = run(pytester, fleet, "-m", "patch")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["*pbs (VM 101 on pve): FAILED (preflight: test_vm_is_on_its_inventory_node: VM 101 is "
         "on node 'pve2', not on 'pve' (its inventory proxmox_host pve): it was migrated*"]
    )  # fmt: skip
    assert_untouched_others_patched(fleet, "pbs")


@pytest.mark.parametrize("deselect", ["preflight", "preflight or guest_agent"])
def test_the_gate_holds_whatever_was_selected(pytester, fleet, deselect):
    """Deselecting the preflight (and the agent stage) does not skip the cluster gate: the
    first action that would change the VM asks the cluster itself."""
    fleet.vms["pbs"].node = "pve2"
    fleet.vms["pihole"].pending = {"cores": "4"}
    result = run(pytester, fleet, "-m", "patch", "-k", f"not ({deselect})")
    assert result.ret == 1
    assert touched(fleet, "pbs") == [] and touched(fleet, "pihole") == []
    result.stdout.fnmatch_lines(["*pbs (VM 101 on pve): FAILED*on node 'pve2'*"])
    result.stdout.fnmatch_lines(["*pihole (VM 102 on pve): FAILED*pending changes*cores: add 4*"])
    assert fleet.vms["pihole-backup"].packages["openssl"] == "3.0.2-1"


def test_without_quorum_nothing_is_touched(pytester, fleet):
    fleet.quorate = False
    result = run(pytester, fleet, "-m", "patch", "-k", "not preflight")
    assert result.ret == 1
    assert [c for _, c in fleet.commands if re.match(MUTATING, c)] == []
    assert not [c for h, c in fleet.commands if "apt-get" in c]
    result.stdout.fnmatch_lines(["*pbs (VM 101 on pve): FAILED*has no quorum*"])


def test_quorum_lost_during_the_update_stops_the_shutdown(pytester, fleet):
    """The proof right before `qm shutdown` asks pvecm again."""
    fleet.vms["pbs"].during_update = {"pending": {}}
    original = fleet.apt

    def apt(vm, command):
        answer = original(vm, command)
        if vm.name == "pbs" and command.endswith("dist-upgrade"):
            fleet.quorate = False
        return answer

    fleet.apt = apt  # type: ignore[method-assign]
    result = run(pytester, fleet, "-m", "patch")
    assert result.ret == 1
    assert not [c for _, c in fleet.commands if re.match(r"qm (shutdown|stop|start) ", c)]
    result.stdout.fnmatch_lines(["*pbs (VM 101 on pve): FAILED (restart:*no quorum*"])


def test_a_vm_migrated_during_its_update_is_not_shut_down(pytester, fleet):
    fleet.vms["pbs"].during_update = {"node": "pve2"}
    # (its agent check after the update would fail first: qm on pve no longer sees the VM)
    result = run(pytester, fleet, "-m", "patch", "-k", "not still_answers")
    assert result.ret == 1
    assert not [c for _, c in fleet.commands if re.match(r"qm (shutdown|stop|start) 101", c)]
    result.stdout.fnmatch_lines(["*pbs (VM 101 on pve): FAILED (restart:*on node 'pve2'*"])


def test_a_vm_migrated_after_its_restart_is_not_taken_as_restarted_by_its_new_qemu(pytester, fleet):
    """A live migration right after the restart: a new QEMU pid and uptime on pve2, the same
    guest boot. The boot id proves the restart; the QEMU process there proves nothing, and the
    proof says it is a migration rather than comparing pids or uptimes across nodes."""
    pbs = fleet.vms["pbs"]
    pbs.migrate_after_start = "pve2"
    result = run(pytester, fleet, "-m", "patch", "--junitxml", "junit.xml", "-rA")
    assert result.ret == 1
    assert pbs.node == "pve2" and pbs.starts == 1
    result.stdout.fnmatch_lines(["PASSED *::test_boot_id_changed[[]pbs[]]"])
    assert not [c for _, c in fleet.commands if re.match(r"qm (shutdown|stop|start) 101", c)][2:]
    result.stdout.no_fnmatch_line("FAILED *test_boot_id_changed*")
    result.stdout.fnmatch_lines_random(
        [
            "FAILED *::test_qemu_process_replaced[[]pbs[]]*",
            "FAILED *::test_started_exactly_once[[]pbs[]]*",
        ]
    )
    out = result.stdout.str()
    assert out.count("VM is on node 'pve2' now, not on 'pve' where this run restarted it") >= 2
    assert "a migration, not a restart" in out
    assert "QEMU uptime" not in out  # no uptime compared across nodes
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="qemu_node_before" value="pve"' in junit
    assert 'name="qemu_node_after" value="pve2"' in junit
    for other in set(fleet.vms) - {"pbs"}:
        assert f"{other} (VM {fleet.vms[other].vmid} on pve): ok" in out


def verbs(fleet, vmid):
    return [c.split()[1] for _, c in fleet.commands if re.match(rf"qm \w+ {vmid}\b", c)]


def test_an_ha_vm_is_restarted_through_ha_and_waited_for(pytester, fleet):
    """qm only queues for an HA VM; the fake's HA acts 0.6 s later, and a start queued before
    the stop was carried out would be lost (the VM would stay off)."""
    pbs = fleet.vms["pbs"]
    pbs.hastate = "started"
    boot_before = pbs.boot_id
    result = run(pytester, fleet, "-m", "patch")
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert pbs.running and pbs.boot_id != boot_before and pbs.hastate == "started"
    sent = [c for _, c in fleet.commands if re.match(r"qm (shutdown|stop|start) 101", c)]
    assert sent == ["qm shutdown 101 --timeout 180", "qm start 101"]
    seen = verbs(fleet, 101)
    between = seen[seen.index("shutdown") + 1 : seen.index("start")]
    assert between.count("status") >= 2  # it waited for HA and qm status to agree
    # the fake's qm status says stopped a round before HA does: the start waited for both
    assert pbs.ha_state_at_start == [("stopped", False)]
    result.stdout.fnmatch_lines(["*pbs (VM 101 on pve): ok*"])


def test_an_ha_vm_restarted_with_method_stop_gets_an_ha_hard_stop(pytester, fleet):
    fleet.vms["pbs"].hastate = "started"
    result = run(pytester, fleet, "-m", "patch", "--restart-method", "stop")
    assert result.ret == 0, result.stdout.str()[-3000:]
    sent = [c for _, c in fleet.commands if re.match(r"qm (shutdown|stop|start) 101", c)]
    assert sent == ["qm stop 101", "qm start 101"]


def test_ha_error_during_the_stop_ends_the_wait_and_starts_nothing(pytester, fleet):
    pbs = fleet.vms["pbs"]
    pbs.hastate, pbs.ha_stop_fails = "started", True
    result = run(pytester, fleet, "-m", "patch")
    assert result.ret == 1
    assert "start" not in verbs(fleet, 101)
    result.stdout.fnmatch_lines(
        ["*pbs (VM 101 on pve): FAILED (restart:*HA has VM 101 in state 'error' (waiting for "
         "stopped): it needs an admin*"]
    )  # fmt: skip
    assert pbs.running  # left as HA left it, and said so


def test_an_ha_stop_not_seen_done_is_reported_loudly(pytester, fleet, monkeypatch):
    """pvepatch stops waiting (shutdown timeout + HA's slack); HA still has the request and
    powers the VM off later: the run says so, with what to check."""
    monkeypatch.setattr("pvepatch.cycle.harestart.HA_SLACK", 1.0)
    pbs = fleet.vms["pbs"]
    pbs.hastate, pbs.ha_delay = "started", 2.5
    result = run(pytester, fleet, "-m", "patch", "--shutdown-timeout", "1")
    assert result.ret == 1
    assert "start" not in verbs(fleet, 101)
    result.stdout.fnmatch_lines(
        ["!!! VM pbs IS NOT RUNNING: NOT KNOWN TO BE RUNNING: HA was asked to stop it and had "
         "not reported it stopped when pvepatch stopped waiting (*); HA may still power it off "
         "and keep it off: check ha-manager status; to keep it running: ha-manager set vm:101 "
         "--state started"]
    )  # fmt: skip
    time.sleep(3 * pbs.ha_delay)
    fleet.ha_rounds()
    assert not pbs.running and pbs.ha_requested == "stopped"  # what the warning warned of


def test_a_locked_ha_vm_is_refused_even_with_skiplock(pytester, fleet):
    pbs = fleet.vms["pbs"]
    pbs.hastate, pbs.lock = "started", "backup"
    result = run(pytester, fleet, "-m", "patch", "--skiplock")
    assert result.ret == 1
    assert not [v for v in verbs(fleet, 101) if v in {"shutdown", "stop", "start"}]
    result.stdout.fnmatch_lines(["*pbs (VM 101 on pve): FAILED (restart:*HA would not act on it*"])
    assert pbs.running and "IS NOT RUNNING" not in result.stdout.str()


def test_an_ha_vm_requested_stopped_is_not_patched(pytester, fleet):
    pbs = fleet.vms["pbs"]
    pbs.hastate = "stopped"
    result = run(pytester, fleet, "-m", "patch")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*pbs (VM 101 on pve): FAILED (preflight:*HA state 'stopped'*"])
    assert_untouched_others_patched(fleet, "pbs")


def test_ha_released_during_the_update_restarts_it_with_qm(pytester, fleet):
    """The gate saw HA; right before the restart, HA no longer manages it: the restart goes
    by what the cluster says then (a plain qm shutdown and start), with a note."""
    pbs = fleet.vms["pbs"]
    pbs.hastate, pbs.during_update = "started", {"hastate": None}
    result = run(pytester, fleet, "-m", "patch")
    assert result.ret == 0, result.stdout.str()[-3000:]
    sent = [c for _, c in fleet.commands if re.match(r"qm (shutdown|stop|start) 101", c)]
    assert sent == ["qm shutdown 101 --timeout 180", "qm start 101"]
    assert pbs.ha_queue == [] and pbs.ha_state_at_start == []  # nothing went through HA
    result.stdout.fnmatch_lines(["*HA released it during the run*restarted with qm directly*"])


def test_ha_taking_over_during_the_update_restarts_it_through_ha(pytester, fleet):
    pbs = fleet.vms["pbs"]
    pbs.during_update = {"hastate": "started"}
    result = run(pytester, fleet, "-m", "patch")
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert pbs.ha_state_at_start == [("stopped", False)]  # the start waited for HA's stop
    assert pbs.running and pbs.hastate == "started"
    result.stdout.fnmatch_lines(["*HA took it over during the run (HA state 'started'*"])


def test_ha_taking_over_while_it_waits_for_a_down_slot_is_seen(pytester, fleet):
    """The kind of restart is chosen after the wait for a down slot (which may be long), not
    before it: another run holds the slot, HA takes pbs over, then the slot comes free."""
    pbs = fleet.vms["pbs"]
    other = SlotTable("pve", fleet.slot_dir, local_opener).try_take(1, None, "x (run other)")

    def later() -> None:
        time.sleep(2.5)
        pbs.hastate = "started"
        other.release()

    threading.Thread(target=later, daemon=True).start()
    result = run(pytester, fleet, "-m", "patch", "--limit", "pbs")
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert pbs.ha_state_at_start == [("stopped", False)]  # through HA: start after HA's stop
    result.stdout.fnmatch_lines(["*HA took it over during the run (HA state 'started'*"])


def test_no_ha_note_for_a_restart_that_never_happened(pytester, fleet):
    pbs = fleet.vms["pbs"]
    pbs.during_update = {"hastate": "started", "lock": "backup"}
    result = run(pytester, fleet, "-m", "patch", "--limit", "pbs")
    assert result.ret == 1
    assert "HA took it over" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*pbs (VM 101 on pve): FAILED (restart:*HA would not act on it*"])


def test_ha_asked_to_keep_it_stopped_during_the_update_is_not_overridden(pytester, fleet):
    """An admin asks HA to stop the VM while it updates: restarting it through HA would end
    with our start request, undoing theirs. Refused by the proof right before the stop."""
    pbs = fleet.vms["pbs"]
    pbs.hastate, pbs.during_update = "started", {"hastate": "stopped"}
    result = run(pytester, fleet, "-m", "patch")
    assert result.ret == 1
    assert not [v for v in verbs(fleet, 101) if v in {"shutdown", "stop", "start"}]
    result.stdout.fnmatch_lines(
        ["*pbs (VM 101 on pve): FAILED (restart:*HA is asked to keep VM 101 'stopped'*"]
    )


def test_an_ha_vm_is_never_rolled_back_behind_has_back(pytester, fleet):
    pbs = fleet.vms["pbs"]
    pbs.hastate, pbs.bad_update = "started", True
    result = run(pytester, fleet, "-m", "patch", "--snapshot", "--rollback-on-failure")
    assert result.ret == 1
    assert "rollback" not in verbs(fleet, 101)
    result.stdout.fnmatch_lines(["*VM 101 is HA-managed (HA state 'started'): qm rollback*"])
    assert pbs.running and "LEFT DOWN" not in result.stdout.str()  # refused, not half-done


@pytest.mark.parametrize("state", ["error", "migrate", "freeze"])
def test_ha_busy_with_a_vm_fails_even_verify(pytester, fleet, state):
    fleet.vms["pbs"].hastate = state
    result = run(pytester, fleet, "-m", "verify")
    assert result.ret == 1
    result.stdout.fnmatch_lines([f"*HA has VM 101 in state '{state}': it is not touched*"])


def test_ignored_ha_resources_are_patched_like_any_vm(pytester, fleet):
    fleet.vms["pbs"].hastate = "ignored"
    result = run(pytester, fleet, "-m", "patch")
    assert result.ret == 0, result.stdout.str()[-3000:]


def test_foreign_pending_changes_need_apply_pending(pytester, fleet):
    fleet.vms["pbs"].pending = {"cores": "4"}
    result = run(pytester, fleet, "-m", "patch")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["*pbs (VM 101 on pve): FAILED (preflight: test_no_pending_config_changes: its Proxmox "
         "config has pending changes pvepatch did not make (cores: add 4): a restart would apply "
         "them. Run with --apply-pending*qm set 101 --revert cores)*"]
    )  # fmt: skip
    assert_untouched_others_patched(fleet, "pbs")
    assert fleet.vms["pbs"].pending == {"cores": "4"}


def test_apply_pending_restarts_and_records_what_the_restart_applied(pytester, fleet):
    pbs = fleet.vms["pbs"]
    pbs.pending = {"cores": "4"}
    pbs.agent_in_config = False  # pvepatch's own `qm set --agent` is pending too
    result = run(pytester, fleet, "-m", "patch", "--apply-pending")
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert pbs.pending == {} and pbs.extra_config == {"cores": "4"} and pbs.agent_in_config
    result.stdout.fnmatch_lines(
        ["*note: its restart applied pending config changes: agent: add 1; cores: add 4"]
    )


def test_nothing_is_called_applied_when_the_vm_never_stopped(pytester, fleet):
    pbs = fleet.vms["pbs"]
    pbs.pending, pbs.ignores_shutdown = {"cores": "4"}, True
    result = run(pytester, fleet, "-m", "patch", "--apply-pending")
    assert result.ret == 1
    assert "its restart applied" not in result.stdout.str()
    assert pbs.pending == {"cores": "4"}


def test_a_change_landing_at_the_stop_is_listed_as_applied(pytester, fleet):
    """Made after the last check, applied by PVE's stop: the config after the stop shows it."""
    fleet.vms["pbs"].pending_at_stop = {"memory": "2048"}
    result = run(pytester, fleet, "-m", "patch")
    result.stdout.fnmatch_lines(
        ["*note: its restart applied pending config changes: memory: 384 -> 2048"]
    )


def test_own_agent_change_is_not_foreign(pytester, fleet):
    fleet.vms["pbs"].agent_in_config = False
    result = run(pytester, fleet, "-m", "patch")
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert fleet.vms["pbs"].agent_in_config


def test_a_pending_change_made_during_the_update_stops_the_restart(pytester, fleet):
    fleet.vms["pbs"].during_update = {"pending": {"memory": "2048"}}
    result = run(pytester, fleet, "-m", "patch")
    assert result.ret == 1
    assert not [c for _, c in fleet.commands if re.match(r"qm (shutdown|stop) 101", c)]
    result.stdout.fnmatch_lines(["*pbs (VM 101 on pve): FAILED (restart:*memory: 384 -> 2048*"])
    assert fleet.vms["pbs"].pending == {"memory": "2048"}


def test_pending_changes_fail_verify_without_touching_anything(pytester, fleet):
    fleet.vms["pihole"].pending = {"cores": "4"}
    result = run(pytester, fleet, "-m", "verify")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*pihole*test_no_pending_config_changes*cores: add 4*"])
    assert [c for _, c in fleet.commands if re.match(MUTATING, c)] == []


CI_NOW = "5d41402abc4b2a76b9719d911017c592aaaaaaaa"


def test_a_cloud_init_vm_whose_instance_id_stays_is_patched(pytester, fleet):
    pbs = fleet.vms["pbs"]
    pbs.cloudinit, pbs.ci_instance_id = True, pbs.ci_next_instance_id
    fleet.vms["pihole"].cloudinit = True  # a drive, but no cloud-init in the guest
    result = run(pytester, fleet, "-m", "patch")
    assert result.ret == 0, result.stdout.str()[-3000:]
    # asked by the preflight, by the gate before the first change, and right before the shutdown
    assert (
        sorted(sent_meta(fleet))
        == ["qm cloudinit dump 101 meta"] * 3 + ["qm cloudinit dump 102 meta"] * 3
    )


def sent_meta(fleet):
    return [c for _, c in fleet.commands if c.startswith("qm cloudinit dump")]


def test_a_new_cloud_init_instance_id_is_reported_before_any_change(pytester, fleet):
    pbs = fleet.vms["pbs"]
    pbs.cloudinit, pbs.ci_instance_id = True, CI_NOW
    result = run(pytester, fleet, "-m", "patch", "--apply-pending")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["*pbs (VM 101 on pve): FAILED (preflight: test_cloud_init_instance_id_stays: its restart "
         f"would give it a new cloud-init instance-id: its cloud-init config changed since the "
         f"guest was set up (instance-id {CI_NOW} now, {pbs.ci_next_instance_id} after a "
         "restart). cloud-init would then make new SSH host keys*"]
    )  # fmt: skip
    assert_untouched_others_patched(fleet, "pbs")


def test_a_pending_cloud_init_change_is_refused_even_with_apply_pending(pytester, fleet):
    pbs = fleet.vms["pbs"]
    pbs.cloudinit, pbs.ci_instance_id = True, pbs.ci_next_instance_id
    pbs.pending = {"ciuser": "admin"}
    result = run(pytester, fleet, "-m", "patch", "--apply-pending")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*pbs*pending changes to its cloud-init config (ciuser)*"])
    assert_untouched_others_patched(fleet, "pbs")


def test_a_cloud_init_change_during_the_update_stops_the_restart(pytester, fleet):
    pbs = fleet.vms["pbs"]
    pbs.cloudinit, pbs.ci_instance_id = True, pbs.ci_next_instance_id
    pbs.during_update = {"ci_next_instance_id": CI_NOW}
    result = run(pytester, fleet, "-m", "patch")
    assert result.ret == 1
    assert not [c for _, c in fleet.commands if re.match(r"qm (shutdown|stop) 101", c)]
    result.stdout.fnmatch_lines(
        ["*pbs (VM 101 on pve): FAILED (restart:*new cloud-init instance-id*"]
    )


def test_max_backup_age_refuses_stale_and_missing_backups(pytester, fleet):
    now = time.time()
    fleet.vms["pbs"].backups = [now - 3 * 86400, now - 5 * 86400]
    fleet.vms["pihole"].backups = [now - 2 * 3600]
    result = run(pytester, fleet, "-m", "patch", "--max-backup-age", "24h")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["*pbs (VM 101 on pve): FAILED (preflight: test_newest_backup_is_recent: its newest "
         "backup (local:backup/vzdump-qemu-101-*.vma.zst) is 3 d old, older than "
         "--max-backup-age 24 h*"]
    )  # fmt: skip
    result.stdout.fnmatch_lines(
        ["*pihole-backup (VM 103 on pve): FAILED*no backup of VM 103 in the backup storages of "
         "pve (--max-backup-age 24 h)*"]
    )  # fmt: skip
    assert touched(fleet, "pbs") == [] and touched(fleet, "pihole-backup") == []
    assert fleet.vms["pihole"].packages["openssl"] == "3.0.2-1"


def test_without_max_backup_age_no_backup_is_asked(pytester, fleet):
    result = run(pytester, fleet, "-m", "patch")
    assert result.ret == 0
    assert not [c for _, c in fleet.commands if "/storage" in c]


@pytest.mark.parametrize("value", ["0", "24x", "-1d", "soon"])
def test_a_bad_max_backup_age_is_a_usage_error(pytester, fleet, value):
    result = run(pytester, fleet, "-m", "patch", f"--max-backup-age={value}")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--max-backup-age must be a positive age such as 24h or 7d*"])
    assert fleet.commands == []
