"""Selection can only reduce what is done, never what is checked (issue: safety by construction).

A wrong binding: the inventory gives `pbs` the vmid of another VM (104, `other`, not a target).
Whatever -m, -k, --deselect or node ids select, no mutating qm command may reach VM 104.
"""

from __future__ import annotations

import re

import fakes
import pytest

pytest_plugins = ["pytester"]

WRONG = """
all:
  children:
    proxmox:
      hosts:
        pve: {ansible_host: 127.0.0.1, ansible_port: 2200}
    ubuntu_vms:
      hosts:
        pbs: {ansible_host: 127.0.0.1, ansible_port: 2201, vmid: 104, proxmox_host: pve}
"""
FAST = ["--restart-pause", "0", "--boot-timeout", "5", "-p", "no:html", "-p", "no:cacheprovider"]
MUTATING_104 = re.compile(r"^qm (shutdown|stop|start|set|reboot|reset) 104\b")
GUEST_CHANGES = re.compile(r"apt-get -y|systemctl start")


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    return fakes.stage_suite(pytester, WRONG)


@pytest.fixture
def fleet() -> fakes.FakeFleet:
    pbs = fakes.FakeVM("pbs", 101, "bc:24:11:00:00:01")
    other = fakes.FakeVM("other", 104, "bc:24:11:00:00:04", agent_in_config=False)
    return fakes.FakeFleet([pbs, other])


def run(suite: pytest.Pytester, fleet: fakes.FakeFleet, *args: str) -> pytest.RunResult:
    return suite.runpytest(
        "--inventory", "inventory.yaml", *FAST, *args, plugins=[fakes.FleetPlugin(fleet)]
    )


PREFLIGHT_IDS = [
    f"tests_patch/test_10_preflight.py::{name}[pbs]"
    for name in (
        "test_ssh_answers_with_verified_host_key",
        "test_proxmox_host_answers",
        "test_vm_is_running",
        "test_vmid_binding_by_mac",
        "test_vmid_binding_by_agent_hostname",
        "test_free_space_on_root",
        "test_free_space_on_boot",
        "test_dpkg_audit_clean",
    )
]
SELECTIONS = {
    "patch": ["-m", "patch"],
    "patch-and-not-verify": ["-m", "patch and not verify"],
    "k-restart": ["-m", "patch", "-k", "restart"],
    "k-not-preflight": ["-m", "patch", "-k", "not preflight"],
    "deselect-preflight": ["-m", "patch", *[a for i in PREFLIGHT_IDS for a in ("--deselect", i)]],
    "node-id-shutdown": ["-m", "patch", "tests_patch/test_40_restart.py::test_vm_shut_down[pbs]"],
    "node-id-agent": [
        "-m",
        "patch",
        "tests_patch/test_20_guest_agent.py::test_agent_enabled_in_vm_config[pbs]",
    ],
}


@pytest.mark.parametrize("args", SELECTIONS.values(), ids=SELECTIONS.keys())
def test_no_mutating_qm_command_reaches_the_wrong_vm(suite, fleet, args):
    result = run(suite, fleet, "-rfE", *args)
    sent = [c for h, c in fleet.commands if h == "pve" and MUTATING_104.match(c)]
    assert sent == [], f"mutating qm commands reached the wrong VM: {sent}"
    changed = [c for h, c in fleet.commands if h == "pbs" and GUEST_CHANGES.search(c)]
    assert changed == [], f"the guest of a wrong binding was changed: {changed}"
    assert fleet.vms["other"].pid == 1000 and fleet.vms["other"].running  # never restarted
    assert not fleet.vms["other"].pending  # no qm set reached it
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) >= 1  # the refusal is reported
    result.stdout.fnmatch_lines(["*wrong binding*"])


def test_the_refusal_names_the_reason_and_the_summary_lists_it(suite, fleet):
    result = run(suite, fleet, "-rf", "-m", "patch", "-k", "restart")
    result.stdout.fnmatch_lines(
        [
            "*pbs (VM 104 on pve): FAILED*",
            "*refused qm shutdown: wrong binding: VM 104 on pve has NIC MAC(s)*",
        ]
    )
    result.stdout.fnmatch_lines(["FAILED*test_restart_allowed[[]pbs[]]*"])


def test_a_silent_agent_refuses_the_restart_of_a_bound_vm(suite):
    """Bound right, but the agent (enabled in the running VM) does not answer: the binding
    cannot be proven, so nothing is shut down."""
    (suite.path / "inventory.yaml").write_text(WRONG.replace("vmid: 104", "vmid: 101"))
    pbs = fakes.FakeVM("pbs", 101, "bc:24:11:00:00:01", agent_installed=False)
    fleet = fakes.FakeFleet([pbs])
    result = run(suite, fleet, "-m", "patch", "-k", "test_40_restart")
    assert not [c for h, c in fleet.commands if re.match(r"qm (shutdown|stop|start) 101", c)]
    result.stdout.fnmatch_lines(["*does not answer, so the binding cannot be proven*"])


def test_a_verify_run_under_xdist_is_allowed(suite, fleet):
    """Read-only runs may use workers (the fake fleet lives in this process, so the workers'
    connections fail: what matters is that the run is not refused and the tests ran)."""
    pytest.importorskip("xdist")
    result = run(suite, fleet, "-m", "verify", "-n", "2", "--ssh-timeout", "2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "refused" not in result.stderr.str()
    result.stdout.fnmatch_lines(["*2 workers*"])


def test_a_guest_unfit_for_patching_is_not_changed_when_the_preflight_is_deselected(suite):
    (suite.path / "inventory.yaml").write_text(WRONG.replace("vmid: 104", "vmid: 101"))
    fleet = fakes.FakeFleet([fakes.FakeVM("pbs", 101, "bc:24:11:00:00:01")])
    result = run(suite, fleet, "-m", "patch", "-k", "not preflight", "--min-free-mb", "999999")
    assert not [
        c
        for _, c in fleet.commands
        if GUEST_CHANGES.search(c)
        or c.startswith("qm ")
        and re.match(r"qm (shutdown|stop|start|set)", c)
    ]
    result.stdout.fnmatch_lines(["*refused patch: only 1200 MB free on /, need 999999*"])


def test_an_agent_naming_another_host_refuses_every_change(suite):
    """MACs match, but the agent of this vmid reports another host name than SSH does."""
    (suite.path / "inventory.yaml").write_text(WRONG.replace("vmid: 104", "vmid: 101"))
    fleet = fakes.FakeFleet([fakes.FakeVM("pbs", 101, "bc:24:11:00:00:01", agent_name="grafana")])
    result = run(suite, fleet, "-m", "patch", "-k", "not preflight")
    assert not [c for _, c in fleet.commands if GUEST_CHANGES.search(c)]
    assert not [c for _, c in fleet.commands if re.match(r"qm (shutdown|stop|start|set) ", c)]
    result.stdout.fnmatch_lines(["*reports host name 'grafana', but SSH reaches 'pbs'*"])


def test_xdist_dist_refusal_holds_with_plugin_autoload_off(suite, fleet, monkeypatch):
    """Under xdist only --dist loadgroup (one group per VM) is allowed (tests/plugin/test_xdist.py)."""
    pytest.importorskip("xdist")
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = suite.runpytest(
        "--inventory", "inventory.yaml", "-p", "pvepatch.plugin", "-p", "xdist.plugin",
        "-n", "2", "--dist", "each", "-m", "patch", plugins=[fakes.FleetPlugin(fleet)],
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--dist each is refused*Nothing was touched*"])
    assert fleet.commands == []
