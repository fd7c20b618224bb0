"""The fleet options on the fake fleet: down slots, redundancy partners, canaries, halts, reboots.

The fake Proxmox host holds its slots with the real slot script (pvepatch.cycle.slots) in a
directory of its own; the end-to-end proof of the budget on real VMs is tests/lab/test_3_fleet.py.
"""

from __future__ import annotations

import re
import subprocess

import fakes
import pytest
from pvepatch.cycle.slots import Busy, Slot, SlotTable, local_opener

pytest_plugins = ["pytester"]

INVENTORY = fakes.STANDARD_INVENTORY
PAIRED = INVENTORY.replace(
    "vmid: 102, proxmox_host: pve}", "vmid: 102, proxmox_host: pve, pvepatch_redundancy_group: dns}"
).replace(
    "vmid: 103, proxmox_host: pve}", "vmid: 103, proxmox_host: pve, pvepatch_redundancy_group: dns}"
)
FAST = ["--boot-timeout", "5", "-p", "no:html"]


@pytest.fixture
def fleet() -> fakes.FakeFleet:
    return fakes.standard_fleet()


def run(pytester, fleet, inventory, *args):
    suite = fakes.stage_suite(pytester, inventory)
    return suite.runpytest(
        "--inventory", "inventory.yaml", *FAST, *args, plugins=[fakes.FleetPlugin(fleet)]
    )


def shutdowns(fleet: fakes.FakeFleet) -> list[str]:
    return [c.split()[2] for h, c in fleet.commands if re.match(r"qm (shutdown|stop) ", c)]


def test_a_slot_held_by_another_run_makes_the_vm_wait_then_fail_clearly(pytester, fleet):
    other = SlotTable("pve", fleet.slot_dir, local_opener).try_take(1, None, "grafana (run x)")
    try:
        result = run(pytester, fleet, INVENTORY, "-m", "patch", "--lock-timeout", "2")
    finally:
        other.release()
    assert shutdowns(fleet) == []  # nobody was taken down
    result.stdout.fnmatch_lines(
        [
            "*pbs (VM 101 on pve): FAILED (restart: test_restart_allowed: no down slot within "
            "--lock-timeout 2 s: pve: 1 of 1 down; grafana (run x))*"
        ]
    )


def touched(fleet: fakes.FakeFleet, vm: str) -> list[str]:
    """What changed `vm`: mutating qm commands for it, apt or the agent's start in it."""
    vmid = fleet.vms[vm].vmid
    qm = r"qm (set|shutdown|stop|start|snapshot|rollback|delsnapshot) "
    return [c for h, c in fleet.commands if re.match(qm + str(vmid), c)] + [
        c for h, c in fleet.commands if h == vm and ("apt-get" in c or "systemd-run" in c)
    ]


def test_a_vm_another_run_is_changing_is_left_alone_and_the_lock_is_ours_after(pytester, fleet):
    """Another run holds VM 101's lock on the host: this run changes nothing in pbs (no agent,
    no snapshot, no apt, no restart), says who holds it, and patches the others. Each VM it
    changed is locked while it runs and free again after it."""
    table = SlotTable("pve", fleet.slot_dir, local_opener)
    other = table.try_lock_vm(101, "pbs (run other, pid 7 on ctl2)")
    assert isinstance(other, Slot)
    try:
        result = run(pytester, fleet, INVENTORY, "-m", "patch", "--snapshot")
    finally:
        other.release()
    assert result.ret == 1
    assert touched(fleet, "pbs") == []
    result.stdout.fnmatch_lines(
        [
            "*pbs (VM 101 on pve): FAILED (guest_agent: *another pvepatch run is changing VM "
            "101: its lock on pve is held by pbs (run other, pid 7 on ctl2); this run leaves "
            "it alone*"
        ]
    )
    for vm in ("pihole", "pihole-backup"):
        assert f"{vm} (VM {fleet.vms[vm].vmid} on pve): ok" in result.stdout.str()
        assert touched(fleet, vm)
        lock = table.try_lock_vm(fleet.vms[vm].vmid, "a later run")  # released at the end
        assert isinstance(lock, Slot), lock
        lock.release()


def test_the_lock_is_held_while_the_run_changes_the_vm(pytester, fleet):
    """Seen from another run while this one updates pbs: the lock is busy, naming this run."""
    table = SlotTable("pve", fleet.slot_dir, local_opener)
    seen: list[object] = []
    apt = fleet.apt

    def apt_and_look(vm, command):
        if vm.name == "pbs" and "dist-upgrade" in command:
            seen.append(table.try_lock_vm(101, "another run"))
        return apt(vm, command)

    fleet.apt = apt_and_look  # type: ignore[method-assign]
    result = run(pytester, fleet, INVENTORY, "-m", "patch", "--limit", "pbs")
    assert result.ret == 0, result.stdout.str()[-2000:]
    assert len(seen) == 1 and isinstance(seen[0], Busy), seen
    assert re.fullmatch(r"held by pbs \(run \S+, pid \d+ on \S+, since [\d:]+\)", seen[0].why)


def test_a_lost_lock_stops_every_change_but_a_start(pytester, fleet):
    """The VM's lock ends while the run updates it (its connection to the host gone): no
    shutdown follows, and the refusal says why."""
    apt = fleet.apt

    def apt_then_lose_the_lock(vm, command):
        if vm.name == "pbs" and "dist-upgrade" in command:
            mine = f"pvepatch-vm-lock {fleet.slot_dir} 101 "  # this test's fleet only
            subprocess.run(["pkill", "-f", mine], check=True)
        return apt(vm, command)

    fleet.apt = apt_then_lose_the_lock  # type: ignore[method-assign]
    result = run(pytester, fleet, INVENTORY, "-m", "patch", "--limit", "pbs")
    assert result.ret == 1
    assert not [c for h, c in fleet.commands if re.match(r"qm (shutdown|stop) 101", c)]
    result.stdout.fnmatch_lines(
        ["*pbs (VM 101 on pve): FAILED (restart: *this run lost the lock of VM 101 on pve*"]
    )


def test_a_vm_the_gate_refuses_is_not_kept_locked(pytester, fleet):
    """pbs has a pending change (refused by the gate for good): its lock is given back at
    once, while the run goes on with the others."""
    table = SlotTable("pve", fleet.slot_dir, local_opener)
    fleet.vms["pbs"].pending = {"cores": "4"}
    seen: list[object] = []
    apt = fleet.apt

    def apt_and_look(vm, command):
        if vm.name == "pihole" and "dist-upgrade" in command:
            seen.append(table.try_lock_vm(101, "another run"))
            seen.append(table.try_lock_vm(102, "another run"))
        return apt(vm, command)

    fleet.apt = apt_and_look  # type: ignore[method-assign]
    result = run(pytester, fleet, INVENTORY, "-m", "patch", "-k", "not preflight")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*pbs (VM 101 on pve): FAILED (guest_agent: *pending changes*"])
    free, busy = seen
    assert isinstance(free, Slot) and isinstance(busy, Busy), seen
    free.release()


def test_a_budget_of_two_admits_a_second_vm_beside_another_runs(pytester, fleet):
    other = SlotTable("pve", fleet.slot_dir, local_opener).try_take(2, None, "grafana (run x)")
    try:
        result = run(pytester, fleet, INVENTORY, "-m", "patch", "--max-down", "2")
    finally:
        other.release()
    assert result.ret == 0, result.stdout.str()[-2000:]
    assert shutdowns(fleet) == ["101", "102", "103"]


def test_redundancy_partners_are_checked_right_before_the_shutdown(pytester, fleet):
    fleet.vms["pihole-backup"].ssh_up = False  # the partner does not answer
    result = run(pytester, fleet, PAIRED, "-m", "patch", "--limit", "pihole")
    assert shutdowns(fleet) == []
    result.stdout.fnmatch_lines(
        [
            "*pihole (VM 102 on pve): FAILED (restart: test_restart_allowed: its redundancy "
            "partner pihole-backup is not healthy*not taking it down while its partner does not "
            "serve)*"
        ]
    )


def test_healthy_partners_are_restarted_one_after_the_other(pytester, fleet):
    result = run(pytester, fleet, PAIRED, "-m", "patch", "--max-down", "3")
    assert result.ret == 0, result.stdout.str()[-2000:]
    assert shutdowns(fleet) == ["101", "102", "103"]
    assert fleet.max_down == 1  # serial here; the group rule under workers: tests/lab


def test_bad_redundancy_group_name_is_an_inventory_error(pytester, fleet):
    result = run(pytester, fleet, PAIRED.replace("group: dns}", "group: ../x}"), "-m", "patch")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*host 'pihole'*pvepatch_redundancy_group*not a group name*"])
    assert fleet.commands == []


def test_no_shutdown_while_apt_runs_in_the_guest(pytester, fleet):
    fleet.vms["pbs"].apt_running = True  # e.g. unattended-upgrades started after our apt run
    result = run(pytester, fleet, INVENTORY, "-m", "patch", "--limit", "pbs")
    assert shutdowns(fleet) == []
    result.stdout.fnmatch_lines(
        ["*pbs (VM 101 on pve): FAILED (restart: test_restart_allowed: apt/dpkg is running in "
         "the guest: 4242 apt-get -y dist-upgrade)*"]
    )  # fmt: skip


def test_a_failed_canary_keeps_the_rest_from_starting(pytester, fleet):
    fleet.vms["pbs"].ssh_after_boot = False
    result = run(pytester, fleet, INVENTORY, "-m", "patch", "--canary", "1", "--max-down", "2")
    assert shutdowns(fleet) == ["101"]
    assert fleet.vms["pihole"].packages["openssl"] == "3.0.1-1"  # not even patched
    result.stdout.fnmatch_lines(
        [
            "*pihole (VM 102 on pve): NOT STARTED (not started: canary pbs failed)*",
            "*pihole-backup (VM 103 on pve): NOT STARTED (not started: canary pbs failed)*",
        ]
    )
    assert result.ret != 0


def test_a_passing_canary_lets_the_rest_go_on(pytester, fleet):
    result = run(pytester, fleet, INVENTORY, "-m", "patch", "--canary", "1")
    assert result.ret == 0
    assert shutdowns(fleet) == ["101", "102", "103"]


def test_max_fail_halts_new_work_and_says_why(pytester, fleet):
    fleet.vms["pbs"].start_fails = True
    fleet.vms["pihole"].lock = "backup"
    result = run(pytester, fleet, INVENTORY, "-m", "patch", "--max-fail", "2", "--max-down", "2")
    assert shutdowns(fleet) == ["101"]
    assert fleet.vms["pihole-backup"].packages["openssl"] == "3.0.1-1"
    result.stdout.fnmatch_lines(
        ["*pihole-backup (VM 103 on pve): NOT STARTED (not started: halted after 2 failures "
         "(pbs, pihole))*"]
    )  # fmt: skip


@pytest.mark.parametrize("policy", ["never", "if-required"])
def test_reboot_policies(pytester, fleet, policy):
    fleet.vms["pihole"].updates = {}  # nothing to install: no reboot asked for
    result = run(pytester, fleet, INVENTORY, "-m", "patch", "--reboot", policy, "-rs")
    assert result.ret == 0, result.stdout.str()[-2000:]
    if policy == "never":
        assert shutdowns(fleet) == []
        result.stdout.fnmatch_lines(
            ["*SKIPPED*--reboot never; STILL NEEDS A REBOOT: /var/run/reboot-required (openssl)*"]
        )
    else:
        assert shutdowns(fleet) == ["101", "103"]
        result.stdout.fnmatch_lines(["*SKIPPED*--reboot if-required: the guest needs no reboot*"])


def test_a_newer_kernel_asks_for_a_reboot(pytester, fleet):
    for vm in fleet.vms.values():
        vm.updates = {}
    fleet.vms["pbs"].newest_kernel = "6.1.0-2-amd64"  # running 6.1.0-1-amd64
    result = run(pytester, fleet, INVENTORY, "-m", "patch", "--reboot", "if-required")
    assert result.ret == 0, result.stdout.str()[-2000:]
    assert shutdowns(fleet) == ["101"]


@pytest.mark.parametrize(
    "option, value", [("--max-down", "0"), ("--max-down", "65"), ("--canary", "-1"),
                      ("--max-fail", "-2"), ("--lock-timeout", "0")]
)  # fmt: skip
def test_bad_fleet_options_are_usage_errors(pytester, fleet, option, value):
    result = run(pytester, fleet, INVENTORY, "-m", "patch", option, value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*pvepatch: {option}*"])
    assert fleet.commands == []


def test_an_unknown_status_after_the_shutdown_is_asked_again(pytester, fleet):
    """`qm status` fails three times once the VM is stopped: asked again, the VM is started
    and passes (a start is always attempted when it is not known to be running)."""
    fleet.vms["pbs"].status_unknown = 3
    result = run(pytester, fleet, INVENTORY, "-m", "patch", "--limit", "pbs")
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert fleet.vms["pbs"].running and fleet.vms["pbs"].pid == 1001
    assert fleet.vms["pbs"].status_unknown == 0


def test_a_partner_not_back_refuses_its_partner_at_once(pytester, fleet):
    """pihole never comes back: it holds the group until the run ends, so pihole-backup is
    refused at once (not after --lock-timeout), even with budget to spare."""
    fleet.vms["pihole"].ssh_after_boot = False
    result = run(pytester, fleet, PAIRED, "-m", "patch", "--max-down", "3", "--lock-timeout", "600")
    assert shutdowns(fleet) == ["101", "102"]
    result.stdout.fnmatch_lines(
        [
            "*pihole-backup (VM 103 on pve): FAILED (restart: test_restart_allowed: not taken "
            "down: its redundancy partner pihole is not healthy: it did not come back healthy*"
        ]
    )
