"""The HA daemon as a real detached process with 1 s rounds, acting on one real QEMU without a
guest OS (as in test_qm.py), and the lab's `down` and `ha-managed` fault around it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from io import StringIO
from pathlib import Path

import pytest
from pvelab import procs
from pvelab.fleet import faults, roster
from pvelab.fleet.lab import Lab
from pvelab.paths import LabPaths
from pvelab.pve import node, vmstate
from pvelab.pve.ha import cli, config, daemon
from pvelab.pve.ha.journal import log_path

BASE = 26000  # a private port base: nothing here listens, but never the lead's 22000
LIB = str(Path(__file__).resolve().parents[2] / "lib")


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LabPaths]:
    """A lab dir with VM 900 (64 MB, no disk, no OS); the daemon and QEMU are killed after."""
    monkeypatch.setenv("PVELAB_ACCEL", "tcg")
    monkeypatch.setenv("PVELAB_PORT_BASE", str(BASE))
    paths = LabPaths(tmp_path / "lab")
    paths.pve_conf_dir.mkdir(parents=True)
    paths.conf(900).write_text("name: t900\nmemory: 64\ncores: 1\n")
    yield paths
    daemon.stop(paths)
    pid = vmstate.running_pid(paths, 900)
    if pid:
        os.kill(pid, signal.SIGKILL)


def run(paths: LabPaths, module: str, *args: str | int) -> subprocess.CompletedProcess[str]:
    """`qm` / `ha-manager` as the node's wrappers run them."""
    env = {**os.environ, "PYTHONPATH": LIB, "PVELAB_NODE": "pve"}
    cmd = [sys.executable, "-m", module, "--lab", str(paths.root), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def wait_for(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until `check()` held; fails after `timeout`."""
    began = time.monotonic()
    while not check():
        assert time.monotonic() - began < timeout, f"not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - began


def service_line(paths: LabPaths) -> str:
    return run(paths, "pvelab.pve.ha", "status").stdout.splitlines()[-1]


def test_round_length_default_and_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(daemon.ROUND_ENV, raising=False)
    assert daemon.round_seconds() == 10.0  # CRM.pm / LRM.pm `my $max_time = 10;`
    monkeypatch.setenv(daemon.ROUND_ENV, "1.5")
    assert daemon.round_seconds() == 1.5


def test_ha_shutdown_through_the_daemon_on_a_real_qemu(lab: LabPaths) -> None:
    assert run(lab, "pvelab.pve.qm", "start", 900).returncode == 0
    assert run(lab, "pvelab.pve.ha", "add", "vm:900", "--state", "started").returncode == 0
    pid = daemon.start(lab, BASE, round_s=1.0)
    assert daemon.start(lab, BASE, round_s=1.0) == pid  # kept, not a second one
    wait_for(lambda: service_line(lab) == "service vm:900 (pve, started)", 10)

    result = run(lab, "pvelab.pve.qm", "shutdown", 900, "--timeout", 1)
    asked = time.monotonic()
    assert (result.returncode, result.stdout) == (0, "Requesting HA stop for VM 900\n")
    assert vmstate.running_pid(lab, 900) is not None  # qm returned before anything happened
    wait_for(lambda: vmstate.running_pid(lab, 900) is None, 15)
    wait_for(lambda: service_line(lab) == "service vm:900 (pve, stopped)", 10)
    seconds = time.monotonic() - asked
    assert 1.0 < seconds < 10  # at least the shutdown timeout, at most a few 1 s rounds
    assert run(lab, "pvelab.pve.qm", "status", 900).stdout == "status: stopped\n"
    log = log_path(lab).read_text()
    for line in (
        "pve pve-ha-crm[", "]: got crm command: stop vm:900 1\n",
        "]: service 'vm:900': state changed from 'started' to 'request_stop'  (timeout = 1)\n",
        "pve pve-ha-lrm[", "]: stopping service vm:900 (timeout=1)\n",
        "]: service status vm:900 stopped\n",
        "]: service 'vm:900': state changed from 'request_stop' to 'stopped'\n",
    ):  # fmt: skip
        assert line in log
    assert "TASK OK" in (lab.log_dir / "ha-tasks.log").read_text()


def test_daemon_restarts_a_started_vm_that_died(lab: LabPaths) -> None:
    assert run(lab, "pvelab.pve.ha", "add", "vm:900").returncode == 0
    daemon.start(lab, BASE, round_s=1.0)
    wait_for(lambda: vmstate.running_pid(lab, 900) is not None, 15)  # HA started it
    os.kill(vmstate.running_pid(lab, 900) or 0, signal.SIGKILL)
    wait_for(lambda: vmstate.running_pid(lab, 900) is None, 5)
    wait_for(lambda: vmstate.running_pid(lab, 900) is not None, 15)
    assert log_path(lab).read_text().count("]: starting service vm:900\n") == 2


def test_down_stops_the_daemon_and_forgets_ha(lab: LabPaths) -> None:
    cli.run(lab, ["add", "vm:900", "--state", "stopped"], cli.Io(StringIO(), StringIO()))
    pid = daemon.start(lab, BASE, round_s=1.0)
    wait_for(lambda: config.manager_status_path(lab).exists(), 10)
    lines: list[str] = []
    Lab(lab, base=BASE).down(log=lines.append)
    assert "HA daemon stopped" in lines
    assert daemon.running_pid(lab) is None and not procs.alive(pid)
    assert not config.resources_path(lab).exists()
    assert not config.manager_status_path(lab).exists()
    assert config.read_lrm_status(lab, "pve") is None


def test_fault_ha_managed_adds_a_started_resource(lab: LabPaths) -> None:
    lab.bin_dir.mkdir(parents=True)
    wrapper = lab.bin_dir / "ha-manager"
    wrapper.write_text(node.wrapper_text(lab, BASE, "pvelab.pve.ha"))
    wrapper.chmod(0o755)
    vm = roster.VM(**{**roster.by_name("pbs").__dict__, "vmid": 900})
    faults.get("ha-managed").host(lab, vm)  # type: ignore[misc]
    assert config.resources_path(lab).read_text() == "vm: 900\n\tstate started\n\n"
    assert config.vm_is_ha_managed(lab, 900)
