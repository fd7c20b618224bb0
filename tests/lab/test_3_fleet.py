"""End to end: Ctrl-C inside a shutdown that takes longer than 90 s, under pytest-xdist.

(The budget under workers and across two runs is proven in test_2_pvepatch_e2e.py, on the
patched, healthy fleet that module has before its faults.)
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from pvelab.fleet.lab import Lab
from pvelab.fleet.roster import by_name
from pvepatch_runner import calls_of, start_pvepatch

pytestmark = pytest.mark.lab

FLEET = {"pbs": 101, "pihole": 102, "pihole-backup": 103, "ca": 104, "grafana": 105}
PIHOLES = ["pihole", "pihole-backup"]


@pytest.fixture(scope="module")
def flab(lab: Lab) -> Lab:
    """ca and grafana fresh: the module before this one left faults in them."""
    lab.reset(["ca", "grafana"], log=lambda line: print(f"[pvelab] {line}", flush=True))
    return lab


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def test_ctrl_c_inside_a_slow_shutdown_leaves_every_vm_running(flab, workdir):
    """ca takes ~110 s to power off. It is the canary, so grafana (on the other worker) waits
    for it. Ctrl-C (twice) while ca shuts down: the shutdown is waited for, ca is started and
    checked, grafana never begins, the run ends interrupted."""
    flab.fault("slow-shutdown", "ca")
    grafana_pid = flab.qemu_pid(by_name("grafana"))
    mark = len(flab.qm_log())
    proc = start_pvepatch(
        flab.inventory_path,
        workdir,
        "-m",
        "patch",
        "--limit",
        "ca,grafana",
        "-n",
        "2",
        "--canary",
        "1",
    )
    try:
        deadline = time.monotonic() + 900
        while not _shutting_down(flab, 104):
            assert time.monotonic() < deadline, "ca's shutdown never began"
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(1)
        interrupted = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(10)
        os.killpg(proc.pid, signal.SIGINT)  # a second Ctrl-C does not escape the bring-back
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(output[-6000:])
    assert proc.returncode == 2, output[-3000:]  # pytest's "interrupted"
    assert time.monotonic() - interrupted > 90  # its whole shutdown was waited for
    shutdown = calls_of(flab.qm_log()[mark:], "shutdown", 104)
    assert len(shutdown) == 1 and shutdown[0].get("rc") == 0, shutdown
    assert len(calls_of(flab.qm_log()[mark:], "start", 104)) == 1
    assert flab.qm("status", 104).stdout.strip() == "status: running"
    assert flab.qm("status", 105).stdout.strip() == "status: running"
    assert not calls_of(flab.qm_log()[mark:], "shutdown", 105)  # no new restart after the interrupt
    assert flab.qemu_pid(by_name("grafana")) == grafana_pid
    assert "SIGINT received: no new action starts" in output
    assert "SIGINT received again: still bringing back" in output
    assert "INTERRUPTED (SIGINT)" in output
    assert "interrupted (SIGINT) during its restart: the restart was finished, healthy again" in (
        output
    )
    assert "grafana: waiting for the canary VM(s) ca to pass" in output
    assert "grafana (VM 105 on pve): NOT STARTED (not started: run interrupted (SIGINT))" in output


def _shutting_down(lab: Lab, vmid: int) -> bool:
    """A `qm shutdown` of the VM is under way (the stand-in marks it as PVE's task list does)."""
    return (lab.paths.lock_dir / f"qmshutdown-{vmid}.task").exists()
