"""The plugin's behaviour, with pytester: the real stage files against a fake fleet."""

from __future__ import annotations

import fakes
import pytest

pytest_plugins = ["pytester"]

INVENTORY = fakes.STANDARD_INVENTORY
FAST = ["--restart-pause", "0", "--boot-timeout", "5", "-p", "no:html"]


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    return fakes.stage_suite(pytester, INVENTORY)


@pytest.fixture
def fleet() -> fakes.FakeFleet:
    return fakes.standard_fleet()


def run(suite: pytest.Pytester, fleet: fakes.FakeFleet, *args: str) -> pytest.RunResult:
    return suite.runpytest(
        "--inventory", "inventory.yaml", *FAST, *args, plugins=[fakes.FleetPlugin(fleet)]
    )


def mutating(fleet: fakes.FakeFleet) -> list[tuple[str, str]]:
    verbs = re.compile(r"qm (start|stop|shutdown|set)|apt-get -y|systemctl start")
    return [(h, c) for h, c in fleet.commands if verbs.search(c)]


import re  # noqa: E402


def test_collect_orders_stages_vm_by_vm(suite, fleet):
    result = run(suite, fleet, "-m", "patch", "--collect-only", "-q")
    ids = [line for line in result.outlines if "::" in line]
    vms = [line.rsplit("[", 1)[1].rstrip("]") for line in ids]
    assert vms == sorted(vms, key=["pbs", "pihole", "pihole-backup"].index)
    pbs_files = [line.split("::")[0] for line in ids if line.endswith("[pbs]")]
    assert pbs_files == sorted(pbs_files)  # test_10 < test_20 < ... < test_50
    assert {f.rsplit("/", 1)[1] for f in pbs_files} == {
        "test_10_preflight.py",
        "test_15_preflight_lock.py",
        "test_20_guest_agent.py",
        "test_25_snapshot.py",
        "test_30_patch.py",
        "test_40_restart.py",
        "test_50_verify.py",
        "test_55_restart_proof.py",
        "test_60_rollback.py",
    }
    assert fleet.connects == []


def test_patch_run_restarts_each_vm_once_never_two_down(suite, fleet):
    boots = {n: vm.boot_id for n, vm in fleet.vms.items()}
    result = run(suite, fleet, "-m", "patch")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0
    assert outcomes["passed"] >= 3 * 30  # every stage test of every VM ran
    assert fleet.max_down == 1
    for name, vm in fleet.vms.items():
        assert vm.boot_id != boots[name]
        assert vm.packages["openssl"] == "3.0.2-1"
        starts = [c for h, c in fleet.commands if c == f"qm start {vm.vmid}"]
        assert len(starts) == 1
    result.stdout.fnmatch_lines(["*mode: patch; mutating commands sent: *"])


def test_verify_run_sends_no_mutating_command(suite, fleet):
    result = run(suite, fleet, "-m", "verify", "-v")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes["passed"] > 0
    assert mutating(fleet) == []
    result.stdout.fnmatch_lines(["*mode: verify; mutating commands sent: 0*"])
    ran = {line.split("::")[0] for line in result.outlines if " PASSED" in line}
    assert ran == {"tests_patch/test_10_preflight.py", "tests_patch/test_50_verify.py"}


def test_bare_pytest_deselects_mutating_stages_and_changes_nothing(suite, fleet):
    result = run(suite, fleet)
    result.stdout.fnmatch_lines(["*patch-only test(s) deselected; nothing will be changed*"])
    assert mutating(fleet) == []
    assert "deselected" in result.parseoutcomes()


def test_not_verify_expression_does_not_enable_patching(suite, fleet):
    result = run(suite, fleet, "-m", "not verify")
    assert mutating(fleet) == []
    result.stdout.fnmatch_lines(["*deselected; nothing will be changed*"])


def test_failed_vm_skips_later_stages_and_others_go_on(suite, fleet):
    fleet.vms["pihole"].ignores_shutdown = True
    result = run(suite, fleet, "-m", "patch", "-rfs")
    result.stdout.fnmatch_lines(["*FAILED*test_vm_shut_down[[]pihole[]]*"])
    result.stdout.fnmatch_lines(["*SKIPPED*earlier stage failed: restart: test_vm_shut_down*"])
    shutdowns = [c for h, c in fleet.commands if c.startswith("qm shutdown 102")]
    assert len(shutdowns) == 1  # no retry
    assert not any(c.startswith("qm stop 102") for h, c in fleet.commands)  # no power-off
    assert fleet.vms["pihole"].running
    for name in ("pbs", "pihole-backup"):
        assert fleet.vms[name].pid == 1001
    result.stdout.fnmatch_lines(["*pihole (VM 102 on pve): FAILED (restart: test_vm_shut_down*"])


def test_hard_stop_fallback_powers_off_after_failed_shutdown(suite, fleet):
    fleet.vms["pihole"].ignores_shutdown = True
    result = run(
        suite, fleet, "-m", "patch", "--limit", "pihole,!pihole-backup", "--hard-stop-fallback"
    )
    assert result.parseoutcomes().get("failed", 0) == 0
    assert any(c.startswith("qm stop 102") for h, c in fleet.commands)
    assert fleet.vms["pihole"].pid == 1001


def test_locked_vm_refused_unless_skiplock(suite, fleet):
    fleet.vms["pbs"].lock = "backup"
    result = run(suite, fleet, "-m", "patch", "--limit", "pbs")
    result.stdout.fnmatch_lines(["*VM 101 is locked (backup)*"])
    assert not any(c.startswith(("qm shutdown 101", "qm stop 101")) for h, c in fleet.commands)
    fleet.commands.clear()
    result = run(suite, fleet, "-m", "patch", "--limit", "pbs", "--skiplock")
    assert result.parseoutcomes().get("failed", 0) == 0
    assert "qm shutdown 101 --timeout 180 --skiplock 1" in [c for h, c in fleet.commands]


def test_wrong_binding_refused_before_any_restart(suite, fleet):
    fleet.vms["pbs"].guest_mac = "bc:24:11:99:99:99"  # the guest at pbs's address is not VM 101
    result = run(suite, fleet, "-m", "patch", "--limit", "pbs")
    result.stdout.fnmatch_lines(["*wrong binding: VM 101 on pve*"])
    assert not any(c.startswith(("qm shutdown", "qm stop", "qm start")) for h, c in fleet.commands)


def test_missing_agent_is_installed_and_enabled(suite, fleet):
    vm = fleet.vms["pbs"]
    vm.agent_installed = False
    vm.agent_in_config = False
    result = run(suite, fleet, "-m", "patch", "--limit", "pbs", "-rs")
    assert result.parseoutcomes().get("failed", 0) == 0
    assert vm.agent_installed and vm.agent_in_config
    assert "qm set 101 --agent enabled=1" in [c for h, c in fleet.commands]
    result.stdout.fnmatch_lines(["*the port appears after the restart*"])


@pytest.mark.parametrize("max_down", [1, 2])
def test_a_vm_not_back_fails_alone_and_keeps_its_down_slot(suite, fleet, max_down):
    """SSH never comes back: that VM fails, and it counts as down until the run ends, so with
    --max-down 1 the next VM is patched but not taken down; with 2 it is restarted."""
    fleet.vms["pihole"].ssh_after_boot = False
    result = run(suite, fleet, "-m", "patch", "-rf", "--max-down", str(max_down))
    result.stdout.fnmatch_lines(["*FAILED*test_ssh_back_with_new_boot[[]pihole[]]*"])
    backup = fleet.vms["pihole-backup"]
    assert backup.packages["openssl"] == "3.0.2-1"  # the next VM was still patched
    assert fleet.vms["pihole"].running
    result.stdout.fnmatch_lines(
        ["*!!! VM pihole did not come back healthy after its restart (ssh_back: gave up waiting*"]
    )
    if max_down == 1:
        assert backup.pid == 1000
        result.stdout.fnmatch_lines(
            [
                "*pihole-backup (VM 103 on pve): FAILED (restart: test_restart_allowed: not taken "
                "down: pihole did not come back healthy and hold(s) the down budget*"
            ]
        )
    else:
        assert backup.pid == 1001
        result.stdout.fnmatch_lines(["*pihole-backup (VM 103 on pve): ok*"])


@pytest.mark.parametrize(
    "inventory, message",
    [
        (
            "all:\n  children:\n    ubuntu_vms:\n      hosts:\n        pbs: {proxmox_host: pve}\n    proxmox:\n      hosts:\n        pve:\n",
            "*inventory.yaml: host 'pbs': 'vmid' is missing*",
        ),
        ("all: [unclosed\n", "*inventory.yaml: YAML syntax error at line*"),
    ],
)
def test_bad_inventory_aborts_before_any_connection(suite, fleet, inventory, message):
    (suite.path / "inventory.yaml").write_text(inventory)
    result = run(suite, fleet, "-m", "patch")
    assert result.ret != 0
    result.stderr.fnmatch_lines([message, "*Nothing was touched*"])
    assert fleet.connects == [] and fleet.commands == []


def test_unknown_limit_aborts(suite, fleet):
    result = run(suite, fleet, "-m", "patch", "--limit", "nosuchvm")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--limit: 'nosuchvm' is neither a host nor a group*"])
    assert fleet.connects == []


MODES = {
    "bare": ([], "verify"),
    "m-verify": (["-m", "verify"], "verify"),
    "m-patch": (["-m", "patch"], "patch"),
    "m-patch-and-not-verify": (["-m", "patch and not verify"], "patch"),
    "m-not-verify": (["-m", "not verify"], "verify"),
    "k-restart": (["-k", "restart"], "verify"),
    "m-patch-k-restart": (["-m", "patch", "-k", "restart"], "patch"),
    "node-id-mutating": (["tests_patch/test_40_restart.py::test_vm_shut_down[pbs]"], "verify"),
    "node-id-mutating-m-patch": (
        ["-m", "patch", "tests_patch/test_40_restart.py::test_vm_shut_down[pbs]"],
        "patch",
    ),
    "node-id-verify": (["tests_patch/test_50_verify.py::test_ssh_answers[pbs]"], "verify"),
}


@pytest.mark.parametrize("args, mode", MODES.values(), ids=MODES.keys())
def test_the_mode_is_decided_once_from_what_is_selected(suite, fleet, args, mode):
    result = run(suite, fleet, *args)
    result.stdout.fnmatch_lines([f"*mode: {mode}; mutating commands sent: *"])
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()
    if mode == "verify":
        assert mutating(fleet) == []
        result.stdout.fnmatch_lines(["*mode: verify; mutating commands sent: 0*"])
    else:
        assert any(c.startswith("qm start ") for _, c in mutating(fleet))


def test_bare_pytest_runs_exactly_what_m_verify_runs(suite, fleet):
    def ran(*args: str) -> list[str]:
        result = run(suite, fleet, "-v", *args)
        return sorted(line.split(" ")[0] for line in result.outlines if " PASSED" in line)

    bare, verify = ran(), ran("-m", "verify")
    assert bare == verify and len(bare) > 10


def test_collect_only_connects_to_nothing_and_sends_nothing(suite, fleet):
    result = run(suite, fleet, "-m", "patch", "--collect-only", "-q")
    assert result.ret == 0
    assert fleet.connects == [] and fleet.commands == []


def test_sigterm_handler_is_restored_after_the_run(suite, fleet):
    import signal

    def mine(signum, frame):  # pragma: no cover - never called
        pass

    old = signal.signal(signal.SIGTERM, mine)
    try:
        run(suite, fleet, "-m", "verify")
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, old)


def test_long_waits_say_per_vm_what_they_wait_for(suite, fleet, monkeypatch):
    monkeypatch.setattr("pvepatch.cycle.wait.PROGRESS_EVERY", 0.1)
    fleet.vms["pihole"].shutdown_seconds = 0.5
    result = run(suite, fleet, "-m", "patch", "--limit", "pihole,!pihole-backup")
    result.stdout.fnmatch_lines(["pvepatch: pihole: shutting down 0 s/180 s"])


def test_installed_plugin_runs_the_stages_from_any_directory(pytester, fleet):
    """`pytest -m verify --inventory PATH` (two words) in a directory with no tests_patch/:
    the entry point knows the options and the packaged stages are collected."""
    (pytester.path / "inv.yaml").write_text(INVENTORY)
    result = pytester.runpytest(
        "-m",
        "verify",
        "--inventory",
        "inv.yaml",
        "-p",
        "no:html",
        plugins=[fakes.FleetPlugin(fleet)],
    )
    outcomes = result.parseoutcomes()
    assert result.ret == 0 and outcomes["passed"] >= 30, result.stdout.str()
    result.stdout.fnmatch_lines(["*mode: verify; mutating commands sent: 0*"])


def test_a_vm_left_down_stops_every_later_restart(suite, fleet):
    fleet.vms["pihole"].start_fails = True
    result = run(suite, fleet, "-m", "patch", "-rf")
    assert not any(c.startswith(("qm shutdown 103", "qm stop 103")) for _, c in fleet.commands)
    assert fleet.vms["pihole-backup"].running and fleet.vms["pihole-backup"].pid == 1000
    assert fleet.max_down == 1
    result.stdout.fnmatch_lines(
        [
            "*pihole-backup (VM 103 on pve): FAILED (restart: test_restart_allowed: not taken "
            "down: pihole did not come back healthy and hold(s) the down budget (--max-down 1)*",
            "!!! VM pihole IS NOT RUNNING: LEFT STOPPED by this run*Start it: qm start 102",
        ]
    )


def test_a_seed_style_pihole_is_accepted_and_the_block_check_skip_is_visible(suite, fleet):
    """Group membership only (no pihole_* names): pi.hole is resolved by default, and the block
    check is skipped with its reason in the terminal (and in the record the report shows)."""
    (suite.path / "inventory.yaml").write_text(
        INVENTORY + "    pihole:\n      hosts:\n        pihole:\n"
    )
    result = run(suite, fleet, "-m", "verify", "-rs", "-k", "dns_blocks")
    why = "no pihole_blocked_name in the inventory: the block check was not run"
    result.stdout.fnmatch_lines(["  pihole (VM 102 on pve): ok", f"    note: {why}"])
    result.stdout.fnmatch_lines([f"SKIPPED*{why}"])
    assert result.parseoutcomes().get("skipped") == 1
