"""The asynchronous HA loop: CRM and LRM rounds (HA8 Manager.pm, LRM.pm) on a fake VM, driven
round by round, with the log lines PVE writes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

import pytest
from pvelab.paths import LabPaths
from pvelab.pve.ha import cli, config, status
from pvelab.pve.ha.lrm import LRM
from pvelab.pve.ha.manager import CRM
from pvelab.pve.qm import cli as qm
from pvelab.pve.qm.context import Context


@dataclass
class FakeVM:
    """The resource agent on a VM that powers on and off at once (or refuses to stop)."""

    running_ids: set[int] = field(default_factory=set)
    calls: list[tuple[str, int, int | None]] = field(default_factory=list)
    stuck: bool = False  # shutdown leaves it running (a locked VM's task fails)

    def running(self, vmid: int) -> bool:
        return vmid in self.running_ids

    def start(self, vmid: int) -> None:
        self.calls.append(("start", vmid, None))
        self.running_ids.add(vmid)

    def shutdown(self, vmid: int, timeout: int | None) -> None:
        self.calls.append(("shutdown", vmid, timeout))
        if not self.stuck:
            self.running_ids.discard(vmid)

    def migrate(self, vmid: int, target: str, online: bool) -> bool:
        self.calls.append(("migrate", vmid, None))
        return False  # only node pve has an LRM here: nothing moves (test_ha_migrate.py does)


@dataclass
class HA:
    """One CRM and node pve's LRM over a lab dir; `round()` runs one CRM then one LRM round."""

    paths: LabPaths
    vm: FakeVM
    lines: list[str]
    crm: CRM
    lrm: LRM

    def round(self, n: int = 1) -> None:
        for _ in range(n):
            self.crm.work()
            self.lrm.work()

    def cli(self, *argv: str) -> tuple[int, str]:
        out, err = StringIO(), StringIO()
        rc = cli.run(self.paths, list(argv), cli.Io(out, err))
        return rc, out.getvalue() + err.getvalue()

    def qm(self, *argv: str | int) -> tuple[int, str]:
        out, err = StringIO(), StringIO()
        rc = qm.run(Context(self.paths, "pve", out, err), [str(a) for a in argv])
        return rc, out.getvalue() + err.getvalue()

    def service_line(self) -> str:
        text = status.status_text(status.status_entries(self.paths, warn=config.quiet))
        return [line for line in text.splitlines() if line.startswith("service ")][0]

    def requested(self) -> str | None:
        return config.read_resources(self.paths).ids["vm:101"].get("state")

    def take_log(self) -> list[str]:
        taken, self.lines[:] = list(self.lines), []
        return taken


@pytest.fixture
def ha(tmp_path: Path) -> HA:
    """VM 101 running, an HA resource (state started) the CRM and LRM already manage."""
    paths = LabPaths(tmp_path / "lab")
    paths.pve_conf_dir.mkdir(parents=True)
    paths.conf(101).write_text("name: t101\nmemory: 64\n")
    vm = FakeVM({101})
    lines: list[str] = []
    setup = HA(paths, vm, lines, CRM(paths, "pve", lines.append), None)  # type: ignore[arg-type]
    setup.lrm = LRM(paths, "pve", vm, lines.append, round_s=0.5)
    assert setup.cli("add", "vm:101", "--state", "started")[0] == 0
    setup.round(2)
    assert setup.service_line() == "service vm:101 (pve, started)"
    setup.take_log()
    return setup


def test_first_rounds_adopt_a_running_vm_without_touching_it(tmp_path: Path) -> None:
    paths = LabPaths(tmp_path / "lab")
    paths.pve_conf_dir.mkdir(parents=True)
    paths.conf(101).write_text("name: t101\n")
    vm, lines = FakeVM({101}), []
    crm, lrm = CRM(paths, "pve", lines.append), LRM(paths, "pve", vm, lines.append, 0.5)
    cli.run(paths, ["add", "vm:101"], cli.Io(StringIO(), StringIO()))
    crm.work()
    lrm.work()
    assert lines == [
        "status change startup => wait_for_quorum",
        "status change startup => wait_for_agent_lock",
        "status change wait_for_quorum => master",
        "node 'pve': state changed from 'unknown' => 'online'",  # HA8 NodeStatus.pm update
        "node 'pve2': state changed from 'unknown' => 'online'",
        "adding new service 'vm:101' on node 'pve'",
        "service 'vm:101': state changed from 'request_start' to 'started'  (node = pve)",
        "status change wait_for_agent_lock => active",
    ]
    assert vm.calls == []  # already running: `started` succeeds without a start


def test_ha_shutdown_is_asynchronous_and_ends_stopped(ha: HA) -> None:
    assert ha.qm("shutdown", 101) == (0, "Requesting HA stop for VM 101\nVM 101 not running\n\n")
    assert (ha.vm.calls, ha.service_line()) == ([], "service vm:101 (pve, started)")
    ha.crm.work()
    assert ha.take_log() == [
        "got crm command: stop vm:101 60",
        "request graceful stop with timeout '60' for service 'vm:101'",
        "service 'vm:101': state changed from 'started' to 'request_stop'  (timeout = 60)",
    ]
    assert ha.requested() == "stopped"  # update_service_config: the requested state is rewritten
    assert ha.service_line() == "service vm:101 (pve, request_stop)"
    ha.lrm.work()
    assert ha.vm.calls == [("shutdown", 101, 60)]
    assert ha.take_log() == [
        "stopping service vm:101 (timeout=60)",
        "service status vm:101 stopped",
    ]
    ha.crm.work()
    assert ha.take_log() == ["service 'vm:101': state changed from 'request_stop' to 'stopped'"]
    assert ha.service_line() == "service vm:101 (pve, stopped)"


def test_qm_stop_is_a_hard_stop(ha: HA) -> None:
    ha.qm("stop", 101)
    ha.round()
    assert ha.vm.calls == [("shutdown", 101, 0)]
    assert "request immediate service hard-stop for service 'vm:101'" in ha.take_log()


def test_queued_stop_then_start_loses_the_start(ha: HA) -> None:
    """Reference §1.6 (TF #800, #635): the start request is already the requested state."""
    ha.qm("shutdown", 101)
    assert ha.qm("start", 101) == (0, "Requesting HA start for VM 101\n")
    ha.round(3)
    assert ha.vm.running_ids == set()
    assert ha.requested() == "stopped"
    assert ha.service_line() == "service vm:101 (pve, stopped)"


def test_start_after_the_stop_was_seen_starts_again(ha: HA) -> None:
    ha.qm("shutdown", 101)
    ha.round(2)
    ha.qm("start", 101)
    assert ha.service_line() == "service vm:101 (pve, starting)"
    ha.round(2)
    assert ha.vm.running_ids == {101}
    assert ha.service_line() == "service vm:101 (pve, started)"
    assert "starting service vm:101" in ha.take_log()


def test_a_started_vm_that_powered_off_is_started_again(ha: HA) -> None:
    ha.vm.running_ids.clear()  # the guest powered itself off
    ha.round(2)
    assert ha.vm.running_ids == {101}
    log = ha.take_log()
    assert log[-2:] == ["starting service vm:101", "service status vm:101 started"]


def test_a_vm_started_behind_has_back_while_stopped_is_stopped_again(ha: HA) -> None:
    ha.qm("shutdown", 101)
    ha.round(3)
    ha.take_log()
    ha.vm.running_ids.add(101)  # someone started QEMU directly
    ha.round(1)
    assert ha.vm.running_ids == set()
    assert ha.take_log() == ["stopping service vm:101", "service status vm:101 stopped"]


def test_a_failed_stop_ends_in_error_which_only_disabled_clears(ha: HA) -> None:
    ha.vm.stuck = True
    ha.qm("shutdown", 101, "--timeout", 5)
    ha.round(2)
    log = ha.take_log()
    assert log[-5:] == [
        "stopping service vm:101 (timeout=5)",
        "unable to stop stop service vm:101 (still running)",  # sic, HA8 LRM.pm
        "service 'vm:101' stop failed (exit code 1)",
        "service 'vm:101': state changed from 'request_stop' to 'error'",
        "service vm:101 is in an error state and needs manual intervention."
        " Look up 'ERROR RECOVERY' in the documentation.",
    ]
    assert ha.service_line() == "service vm:101 (pve, error)"
    assert ha.qm("stop", 101)[0] == 255
    assert ha.cli("set", "vm:101", "--state", "disabled") == (0, "")
    assert ha.service_line() == "service vm:101 (pve, clearing error flag)"
    ha.vm.stuck = False
    ha.round(2)
    assert ha.service_line() == "service vm:101 (pve, disabled)"
    assert ha.vm.running_ids == set()


def test_a_start_that_fails_is_retried_then_errors(ha: HA) -> None:
    ha.qm("shutdown", 101)
    ha.round(3)
    ha.vm.start = lambda vmid: None  # type: ignore[method-assign]  # the VM never comes up
    ha.qm("start", 101)
    ha.round(6)
    log = ha.take_log()
    assert "restart policy: retry number 1 for service 'vm:101'" in log
    assert "unable to start service vm:101 on local node after 1 retries" in log
    # relocation to pve2 (HA8 select_service_node) fails here, so it is tried on pve again
    assert "migrate service 'vm:101' to node 'pve2' (running)" in log
    assert "service 'vm:101' - migration failed (exit code 1)" in log
    assert (
        "recovery policy for service vm:101 failed, entering error state. Failed nodes: pve, pve"
        in log
    )
    assert ha.service_line() == "service vm:101 (pve, error)"


def test_removing_the_resource_leaves_the_vm_alone(ha: HA) -> None:
    ha.cli("remove", "vm:101")
    ha.vm.running_ids.clear()
    ha.round(2)
    assert ha.vm.calls == []
    assert ha.take_log() == ["removing stale service 'vm:101' (no config)"]
    assert ha.qm("status", 101)[1] == "status: stopped\n"


def test_lrm_status_carries_the_results_the_crm_reads(ha: HA) -> None:
    lrm = config.read_lrm_status(ha.paths, "pve")
    assert lrm is not None and lrm["state"] == "active" and lrm["mode"] == "active"
    uid = config.read_manager_status(ha.paths)["service_status"]["vm:101"]["uid"]
    ha.lrm.work()
    results = config.read_lrm_status(ha.paths, "pve")["results"]  # type: ignore[index]
    assert results[uid] == {"sid": "vm:101", "state": "started", "exit_code": 0}
    assert abs(config.read_manager_status(ha.paths)["timestamp"] - time.time()) < 5
