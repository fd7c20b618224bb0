"""End to end: the report and the ledger of a real patch run hold the guest's real facts; a
SIGTERM mid-restart leaves a ledger that says so; headless Chromium renders the report.

Runs after test_2_pvepatch_e2e.py (which leaves faults behind): it starts from a fresh pbs.
PVEPATCH_REPORT_LAB=<dir> runs it against a lab of one's own (developing) instead of the session lab.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from pvelab.fleet.lab import Lab
from pvelab.paths import LabPaths
from pvepatch.audit import ledger
from pvepatch_runner import PROJECT, run_pvepatch

pytestmark = pytest.mark.lab
VM, VMID = "pbs", 101
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def rlab(request) -> Lab:
    own = os.environ.get("PVEPATCH_REPORT_LAB")
    return Lab(LabPaths(Path(own))) if own else request.getfixturevalue("lab")


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reports")


def guest(lab: Lab, cmd: str) -> str:
    rc, out, err = lab.guest_run(VM, cmd)
    assert rc == 0, err
    return out.strip()


def versions(lab: Lab) -> dict[str, str]:
    out = guest(lab, "dpkg-query -W -f '${Package} ${Version}\\n'")
    return dict(line.split(" ", 1) for line in out.splitlines() if line)


@pytest.fixture(scope="module")
def patched(rlab, reports) -> SimpleNamespace:
    rlab.reset([VM], log=lambda line: print(f"[pvelab] {line}", flush=True))
    before = versions(rlab)
    boot_before = guest(rlab, "cat /proc/sys/kernel/random/boot_id")
    report = reports / "pvepatch-e2e-patch.html"
    result = run_pvepatch(
        rlab.inventory_path,
        str(PROJECT / "tests_patch"),  # loads the project's conftest for any inventory path
        "-m",
        "patch",
        "--limit",
        VM,
        f"--html={report}",
        workdir=reports,
    )
    return SimpleNamespace(
        result=result,
        html=report,
        page=report.read_text(),
        records=ledger.read(report.with_suffix(".jsonl")),
        before=before,
        after=versions(rlab),
        boot_before=boot_before,
        boot_after=guest(rlab, "cat /proc/sys/kernel/random/boot_id"),
        kernel=guest(rlab, "uname -r"),
        qm_log=rlab.qm_log(),
    )


def test_report_and_ledger_hold_the_guests_real_facts(patched):
    assert patched.result.rc == 0, patched.result.output[-3000:]
    facts = [r for r in patched.records if r["type"] == "stage" and r["vm"] == VM][-1]["facts"]
    page = patched.page
    upgraded = [p for p in facts["packages"] if p["kind"] == "upgraded"]
    assert len(upgraded) >= 4
    for p in facts["packages"]:
        assert p["old"] == patched.before.get(p["name"]) and p["new"] == patched.after.get(
            p["name"]
        )
        row = f"<td>{html.escape(p['name'])}</td><td>{html.escape(p['old'] or '—')}</td><td>{html.escape(p['new'] or '—')}</td>"
        assert row in page, row
    assert facts["reboot_required"] and "pvelab-kernel-sim" in facts["reboot_packages"]
    assert "yes, asked by: " in page and "pvelab-kernel-sim" in page
    assert facts["boot_id_before"] == patched.boot_before
    assert facts["boot_id_after"] == patched.boot_after != patched.boot_before
    assert f"<td>boot_id</td><td>{patched.boot_before}</td><td>{patched.boot_after}</td>" in page
    assert facts["kernel_before"] == facts["kernel_after"] == patched.kernel
    assert f"<td>running kernel</td><td>{patched.kernel}</td><td>{patched.kernel}</td>" in page
    pids = (facts["qemu_pid_before"], facts["qemu_pid_after"])
    assert all(pids) and pids[0] != pids[1]
    assert f"<td>QEMU pid</td><td>{pids[0]}</td><td>{pids[1]}</td>" in page
    restart = facts["restart"]
    assert all(e["time"] for e in restart["events"]) and restart["downtime_s"] > 0
    assert re.search(r"downtime \(shutdown sent to agent answering\)</td><td>[\d.]+ s", page)
    # every qm call the stand-in logged for VM 101 during the run is in the report, with its exit code
    lab_calls = [
        c for c in patched.qm_log if c["argv"][:2] in (["shutdown", "101"], ["start", "101"])
    ]
    for call in lab_calls[-2:]:
        command = html.escape(" ".join(["qm", *call["argv"]]))
        assert re.search(
            rf"<td>pve</td><td>{re.escape(command)}</td><td>{call['rc']}</td>", page
        ), command
    header = patched.records[0]["header"]
    assert (
        header["mode"] == "patch"
        and header["--limit"] == VM
        and "git " in header["pvepatch version"]
    )
    assert patched.records[-1]["mutating_commands_sent"] > 0
    assert re.search(
        rf"<b>mutating commands sent</b></td><td>{patched.records[-1]['mutating_commands_sent']}</td>",
        page,
    )
    transcript = next(  # the upgrade itself, not the plan (apt-get -s dist-upgrade) before it
        path
        for path in sorted(
            patched.html.parent.glob("pvepatch-e2e-patch.files/pbs-*dist-upgrade.txt")
        )
        if " apt-get -y " in path.read_text().splitlines()[1]
    )
    assert "Setting up pvelab-kernel-sim" in transcript.read_text()
    assert f'href="pvepatch-e2e-patch.files/{transcript.name}"' in page
    print(f"report {patched.html} ({patched.html.stat().st_size} bytes)")


def test_chromium_renders_the_matrix_and_vm_details(patched, reports, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run scripts/setup.sh (installs Debian's chromium)")
    base = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,3000",
    ]  # fmt: skip
    url = patched.html.as_uri()
    dom = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True
    ).stdout
    assert 'id="pvepatch-matrix"' in dom and 'id="vm-pbs"' in dom
    assert re.search(
        r'<a href="#vm-pbs">pbs</a></td><td>101</td>(<td class="passed">passed \([\d.]+ s\)</td>){2}'
        r'<td class="skipped">skipped \([\d.]+ s\)</td>'  # no --snapshot
        r'(<td class="passed">passed \([\d.]+ s\)</td>){3}<td class="skipped">skipped',
        dom,
    )
    # the results table exists only once pytest-html's JavaScript has drawn it
    assert (
        '<td class="col-testId">tests_patch/test_40_restart.py::test_vm_shut_down[pbs]</td>' in dom
    )
    assert dom.count('class="col-vm">pbs</td>') >= 30
    shot = reports / "report.png"
    subprocess.run(
        [*base, f"--screenshot={shot}", url], capture_output=True, timeout=180, check=True
    )
    assert shot.stat().st_size > 50_000
    kept = PROJECT / "reports" / "e2e-report-screenshot.png"
    shutil.copy(shot, kept)
    print(f"screenshot: {shot} (kept as {kept})")


def test_sigterm_during_restart_finishes_it_and_the_ledger_says_so(rlab, reports):
    """SIGTERM while the VM is stopped: the restart under way is finished (started, checked),
    nothing new starts, the run ends interrupted (exit 2), and the ledger says all of it."""
    report = reports / "pvepatch-e2e-sigterm.html"
    jsonl = report.with_suffix(".jsonl")
    cmd = [sys.executable, "-m", "pytest", str(PROJECT / "tests_patch"), "--inventory", str(rlab.inventory_path), "-m", "patch",
           "--limit", VM, "--restart-pause", "30", f"--html={report}", "-p", "no:cacheprovider"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_until(lambda: jsonl.exists() and any(
            r["type"] == "stage_start" and r["stage"] == "restart" for r in ledger.read(jsonl)
        ), 900, "the restart stage to begin")  # fmt: skip
        wait_until(lambda: "stopped" in rlab.qm("status", VMID).stdout, 300, "VM 101 stopped")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(output[-3000:])
    assert proc.returncode == 2  # pytest's "interrupted"
    records = ledger.read(jsonl)
    end = records[-1]
    assert end["type"] == "run_end" and end["verdict"] == "interrupted", end
    assert end["vms"][VM]["verdict"] == "passed", end["vms"]  # brought back and verified
    assert "SIGTERM received: no new action starts" in output
    assert end["left_down"] == {}
    assert "status: running" in rlab.qm("status", VMID).stdout


def wait_until(probe, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(1)
