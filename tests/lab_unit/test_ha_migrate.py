"""HA migrate / relocate / node maintenance (HA8 4.0.7 CLI/ha_manager.pm, API2/HA/Resources.pm,
Manager.pm, LRM.pm, Resources/PVEVM.pm; QS8 API2/Qemu.pm migrate_vm): the CLI's checks and the
crm_commands lines, then the CRM and both nodes' LRMs carrying them out round by round."""

from __future__ import annotations

from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

import pytest
from pvelab.paths import LabPaths
from pvelab.pve import cluster, vmconf, vmstate
from pvelab.pve.ha import agent, cli, config, status
from pvelab.pve.ha.lrm import LRM
from pvelab.pve.ha.manager import CRM
from pvelab.pve.qm import cli as qm
from pvelab.pve.qm import migrate as qm_migrate
from pvelab.pve.qm import power
from pvelab.pve.qm.context import Context


def ha(paths: LabPaths, *argv: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    rc = cli.run(paths, list(argv), cli.Io(out, err))
    return rc, out.getvalue(), err.getvalue()


def crm_commands(paths: LabPaths) -> str:
    path = config.crm_commands_path(paths)
    return path.read_text() if path.exists() else ""


@pytest.fixture
def paths(tmp_path: Path) -> LabPaths:
    lab = LabPaths(tmp_path / "lab")
    lab.pve_conf_dir.mkdir(parents=True)
    for vmid in (101, 102):
        lab.conf(vmid).write_text(f"name: t{vmid}\nmemory: 64\n")
        cluster.register(lab, vmid)
    return lab


# --- the CLI -------------------------------------------------------------------------------


def test_migrate_relocate_and_maintenance_queue_pves_lines(paths: LabPaths) -> None:
    ha(paths, "add", "vm:101")
    assert ha(paths, "migrate", "vm:101", "pve2") == (0, "", "")
    assert ha(paths, "relocate", "101", "pve2") == (0, "", "")
    assert ha(paths, "crm-command", "migrate", "vm:101", "pve2") == (0, "", "")
    assert ha(paths, "crm-command", "relocate", "vm:101", "pve2") == (0, "", "")
    assert ha(paths, "crm-command", "node-maintenance", "enable", "pve2") == (0, "", "")
    assert ha(paths, "crm-command", "node-maintenance", "disable", "pve2") == (0, "", "")
    assert crm_commands(paths) == (
        "migrate vm:101 pve2\nrelocate vm:101 pve2\nmigrate vm:101 pve2\nrelocate vm:101 pve2\n"
        "enable-node-maintenance pve2\ndisable-node-maintenance pve2\n"
    )


def test_migrate_checks(paths: LabPaths) -> None:
    assert ha(paths, "migrate", "vm:101", "pve2") == (
        255, "", "resource 'vm:101' is not HA managed\n")  # fmt: skip
    ha(paths, "add", "vm:101")
    # no node check beyond the format: the CRM says `node not online` later
    assert ha(paths, "migrate", "vm:101", "pve9")[0] == 0
    assert ha(paths, "migrate", "vm:101", "pve_2") == (255, "", (
        "400 Parameter verification failed.\n"
        "node: invalid format - value does not look like a valid node name\n\n"
        "ha-manager crm-command migrate <sid> <node>\n"))  # fmt: skip
    assert ha(paths, "relocate", "vm:101") == (
        255, "", "400 not enough arguments\nha-manager crm-command relocate <sid> <node>\n")  # fmt: skip
    config.write_manager_status(paths, {"service_status": {"vm:101": {"state": "error"}}})
    assert ha(paths, "migrate", "vm:101", "pve2") == (
        255, "", "service 'vm:101' in error state, must be disabled and fixed first\n")  # fmt: skip
    assert ha(paths, "migrate", "999", "pve2") == (
        255, "", "unable do detect SID from VMID - VM/CT 999 does not exist\n")  # fmt: skip


def test_node_maintenance_checks_the_node_exists(paths: LabPaths) -> None:
    assert ha(paths, "crm-command", "node-maintenance", "enable", "pve9") == (
        255, "", "no such cluster node 'pve9'\n")  # fmt: skip
    assert ha(paths, "crm-command", "node-maintenance", "disable", "pve", "x") == (
        255, "", "400 too many arguments\nha-manager crm-command node-maintenance disable <node>\n")  # fmt: skip


def test_qm_migrate_of_an_ha_vm_requests_it(paths: LabPaths) -> None:
    ha(paths, "add", "vm:101")
    out, err = StringIO(), StringIO()
    rc = qm.run(Context(paths, "pve", out, err), ["migrate", "101", "pve2"])
    assert (rc, out.getvalue(), err.getvalue()) == (
        0, "Requesting HA migration for VM 101 to node pve2\n", "")  # fmt: skip
    assert crm_commands(paths) == "migrate vm:101 pve2\n"
    assert cluster.vm_node(paths, 101) == "pve"  # nothing moved yet: the CRM does it


def test_qm_migrate_of_an_ha_vm_in_error_fails_like_the_worker(paths: LabPaths) -> None:
    ha(paths, "add", "vm:101")
    config.write_manager_status(paths, {"service_status": {"vm:101": {"state": "error"}}})
    out, err = StringIO(), StringIO()
    rc = qm.run(Context(paths, "pve", out, err), ["migrate", "101", "pve2"])
    assert (rc, out.getvalue(), err.getvalue()) == (
        255,
        "Requesting HA migration for VM 101 to node pve2\n"
        "service 'vm:101' in error state, must be disabled and fixed first\n",
        "command 'ha-manager migrate vm:101 pve2' failed: exit code 255\n",
    )


# --- the CRM and the LRMs ------------------------------------------------------------------


@dataclass
class FakeVM:
    """VMs that power on and off at once; migrate moves the config (online too, unless
    `no_live`, the lab's real limit)."""

    paths: LabPaths
    running_ids: set[int] = field(default_factory=set)
    calls: list[tuple] = field(default_factory=list)
    no_live: bool = False

    def running(self, vmid: int) -> bool:
        return vmid in self.running_ids

    def start(self, vmid: int) -> None:
        self.calls.append(("start", vmid))
        self.running_ids.add(vmid)

    def shutdown(self, vmid: int, timeout: int | None) -> None:
        self.calls.append(("shutdown", vmid, timeout))
        self.running_ids.discard(vmid)

    def migrate(self, vmid: int, target: str, online: bool) -> bool:
        self.calls.append(("migrate", vmid, target, online))
        if not online and self.running(vmid):
            self.shutdown(vmid, None)
        if self.running(vmid) and self.no_live:
            return False
        cluster.move(self.paths, vmid, target)
        return True


@dataclass
class Lab:
    paths: LabPaths
    vm: FakeVM
    lines: list[str]
    crm: CRM
    lrms: dict[str, LRM]

    def round(self, n: int = 1) -> None:
        for _ in range(n):
            self.crm.work()
            for lrm in self.lrms.values():
                lrm.work()

    def line(self) -> str:
        text = status.status_text(status.status_entries(self.paths, warn=config.quiet))
        return [line for line in text.splitlines() if line.startswith("service ")][0]

    def take_log(self) -> list[str]:
        taken, self.lines[:] = list(self.lines), []
        return taken

    def sd(self) -> dict:
        return dict(config.read_manager_status(self.paths)["service_status"]["vm:101"])


def make_lab(paths: LabPaths, state: str, running: bool) -> Lab:
    vm = FakeVM(paths, {101} if running else set())
    lines: list[str] = []
    lrms = {n: LRM(paths, n, vm, lines.append, round_s=0.5) for n in ("pve", "pve2")}
    lab = Lab(paths, vm, lines, CRM(paths, "pve", lines.append), lrms)
    assert ha(paths, "add", "vm:101", "--state", state)[0] == 0
    lab.round(3)
    lab.take_log()
    return lab


def test_migrate_of_a_stopped_vm_moves_its_config(paths: LabPaths) -> None:
    lab = make_lab(paths, "stopped", running=False)
    assert lab.line() == "service vm:101 (pve, stopped)"
    ha(paths, "migrate", "vm:101", "pve2")
    lab.crm.work()
    assert lab.take_log() == [
        "got crm command: migrate vm:101 pve2",
        "service 'vm:101': state changed from 'stopped' to 'migrate'  (node = pve, target = pve2)",
    ]
    assert (lab.line(), lab.sd()["target"]) == ("service vm:101 (pve, migrate)", "pve2")
    assert config.hastate(paths, 101) == "migrate"  # /cluster/resources hastate
    lab.lrms["pve"].work()
    assert lab.vm.calls == [("migrate", 101, "pve2", True)]
    assert cluster.vm_node(paths, 101) == "pve2"
    lab.round(2)
    assert "service 'vm:101': state changed from 'migrate' to 'request_stop'  (node = pve2)" in (
        lab.take_log()
    )
    assert lab.line() == "service vm:101 (pve2, stopped)"


def test_relocate_of_a_running_vm_stops_moves_and_starts_it(paths: LabPaths) -> None:
    lab = make_lab(paths, "started", running=True)
    ha(paths, "relocate", "vm:101", "pve2")
    lab.crm.work()
    assert lab.take_log()[-2:] == [
        "relocate service 'vm:101' to node 'pve2'",
        "service 'vm:101': state changed from 'started' to 'relocate'  (node = pve, target = pve2)",
    ]
    lab.round(3)
    assert lab.vm.calls == [
        ("migrate", 101, "pve2", False), ("shutdown", 101, None), ("start", 101)]  # fmt: skip
    assert "service 'vm:101': state changed from 'relocate' to 'started'  (node = pve2)" in (
        lab.take_log()
    )
    assert (lab.line(), cluster.vm_node(paths, 101)) == ("service vm:101 (pve2, started)", "pve2")


def test_migrate_of_a_running_vm_fails_in_the_lab_and_it_stays(paths: LabPaths) -> None:
    lab = make_lab(paths, "started", running=True)
    lab.vm.no_live = True
    ha(paths, "migrate", "vm:101", "pve2")
    lab.round(2)
    log = lab.take_log()
    assert "service vm:101 not moved (migration error)" in log
    assert "service 'vm:101' - migration failed (exit code 1)" in log
    assert "service 'vm:101': state changed from 'migrate' to 'started'  (node = pve)" in log
    assert lab.line() == "service vm:101 (pve, starting)"  # `running` is gone with the change
    lab.round()
    assert (lab.line(), cluster.vm_node(paths, 101)) == ("service vm:101 (pve, started)", "pve")


def test_crm_refuses_bad_targets(paths: LabPaths) -> None:
    lab = make_lab(paths, "started", running=True)
    for line in ("migrate vm:101 pve9", "migrate vm:101 pve", "relocate vm:555 pve2", "frob"):
        config.queue_crm_command(paths, line)
    lab.crm.work()
    assert lab.take_log() == [
        "crm command error - node not online: migrate vm:101 pve9",
        "ignore crm command - service already on target node: migrate vm:101 pve",
        "crm command error - no such service: relocate vm:555 pve2",
        "unable to parse crm command: frob",
    ]


def test_node_maintenance_moves_services_and_back(paths: LabPaths) -> None:
    lab = make_lab(paths, "started", running=True)
    ha(paths, "crm-command", "node-maintenance", "enable", "pve")
    lab.round()
    assert config.read_manager_status(paths)["node_request"] == {"pve": {"maintenance": 1}}
    assert config.read_lrm_status(paths, "pve")["mode"] == "maintenance"  # type: ignore[index]
    lab.round(3)
    log = lab.take_log()
    assert "status change active => maintenance" in log
    assert "node 'pve': state changed from 'online' => 'maintenance'" in log
    assert "migrate service 'vm:101' to node 'pve2' (running)" in log
    assert (lab.line(), lab.sd()["maintenance_node"]) == ("service vm:101 (pve2, started)", "pve")
    assert (
        status.status_text(status.status_entries(paths, warn=config.quiet)).count(
            "maintenance mode"
        )
        == 1
    )
    ha(paths, "crm-command", "node-maintenance", "disable", "pve")
    lab.round(4)
    log = lab.take_log()
    assert "node 'pve': state changed from 'maintenance' => 'online'" in log
    assert "status change maintenance => active" in log
    assert "moving service 'vm:101' back to 'pve', node came back from maintenance." in log
    assert lab.line() == "service vm:101 (pve, started)"
    assert config.read_manager_status(paths)["node_request"] == {"pve": {}}  # Perl autovivifies


def test_maintenance_commands_for_a_node_in_the_wrong_state(paths: LabPaths) -> None:
    lab = make_lab(paths, "started", running=True)
    ha(paths, "crm-command", "node-maintenance", "disable", "pve2")
    lab.crm.work()
    assert lab.take_log() == [
        "clearing maintenance of node pve2 requested, but it's in state online"
    ]


def test_a_failed_start_relocates_to_the_other_node(paths: LabPaths) -> None:
    lab = make_lab(paths, "stopped", running=False)
    lab.vm.start = lambda vmid: None  # type: ignore[method-assign]  # it never comes up
    ha(paths, "set", "vm:101", "--state", "started")
    lab.round(8)
    log = lab.take_log()
    assert "starting service vm:101 on node 'pve' failed, relocating service." in log
    assert "migrate service 'vm:101' to node 'pve2' (running)" in log
    assert "recovery policy for service vm:101 failed, entering error state. Failed nodes: pve, pve2" in log  # fmt: skip  # noqa: E501
    assert lab.line() == "service vm:101 (pve2, error)"


# --- the resource agent on the stand-in qm -------------------------------------------------


@pytest.fixture
def fake_qemu(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    running: set[int] = set()
    monkeypatch.setattr(vmstate, "running_pid", lambda p, v: 4242 if v in running else None)
    monkeypatch.setattr(power, "launch", lambda ctx, vmid, conf, t: running.add(vmid))
    monkeypatch.setattr(qm_migrate, "HOLD_SECONDS", 0.0)
    return running


def test_power_agent_moves_a_stopped_vm_with_the_migrate_lock(
    paths: LabPaths, fake_qemu: set[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    locks: list[str | None] = []
    real_move = cluster.move

    def move(p: LabPaths, vmid: int, node: str) -> None:
        locks.append(vmconf.load_conf(p.conf(vmid)).lock)  # type: ignore[union-attr]
        real_move(p, vmid, node)

    monkeypatch.setattr(cluster, "move", move)
    assert agent.PowerAgent(paths, "pve").migrate(101, "pve2", online=True) is True
    assert (locks, cluster.vm_node(paths, 101)) == (["migrate"], "pve2")
    assert "lock" not in paths.conf(101).read_text()
    log = (paths.log_dir / "ha-tasks.log").read_text()
    assert "qmigrate:101: " in log and "migration finished successfully" in log


def test_power_agent_cannot_live_migrate(paths: LabPaths, fake_qemu: set[int]) -> None:
    fake_qemu.add(101)
    assert agent.PowerAgent(paths, "pve").migrate(101, "pve2", online=True) is False
    assert (cluster.vm_node(paths, 101), fake_qemu) == ("pve", {101})
    assert "TASK ERROR: pvelab: online migration" in (paths.log_dir / "ha-tasks.log").read_text()


def test_power_agent_relocates_and_the_target_node_starts_it(
    paths: LabPaths, fake_qemu: set[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_qemu.add(101)
    stops: list[int] = []
    monkeypatch.setattr(agent.PowerAgent, "shutdown", lambda s, v, t: (stops.append(v), fake_qemu.discard(v)))  # fmt: skip  # noqa: E501
    assert agent.PowerAgent(paths, "pve").migrate(101, "pve2", online=False) is True
    assert (stops, cluster.vm_node(paths, 101)) == ([101], "pve2")
    agent.PowerAgent(paths, "pve2").start(101)  # pve2's qm finds the config on pve2
    assert fake_qemu == {101}
