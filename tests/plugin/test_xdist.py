"""Under pytest-xdist (-n N): one VM's stages on one worker, in order, and one record of the run
(one HTML report, one ledger, one JUnit file, one terminal summary) equal to a serial run's."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import reportkit
from pvepatch.audit import ledger

pytest_plugins = ["pytester"]
pytest.importorskip("xdist")

HERE = Path(__file__).parent
VMS = reportkit.names(3)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
UNIT = re.compile(r"(pvepatch-[a-z-]+)-[0-9a-z-]+-[0-9a-f]{6}\b")  # a detached apt's unit
RUN = re.compile(r"\(run \w+, pid \d+ on [^,]+, since [0-9:]+\)")  # a down slot's holder
# (batch: a random token per round trip, like the run id)
TIMING = {"seq", "time", "ts", "run_id", "started", "ended", "duration_s", "after_s",
          "downtime_s", "at", "duration", "down", "batch"}  # fmt: skip


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PVEPATCH_FAKE_FLEET", str(len(VMS)))
    for helper in ("fakes.py", "reportkit.py", "xdistfleet.py"):  # workers import from their cwd
        shutil.copy(HERE / helper, pytester.path / helper)
    pytester.makeconftest("from xdistfleet import pytest_cmdline_main, pytest_sessionfinish")
    return reportkit.make_suite(pytester, len(VMS))


def run(suite: pytest.Pytester, name: str, *args: str) -> tuple[pytest.RunResult, Path]:
    """The stages on a fake fleet in every process (xdistfleet, by conftest); -> result, report."""
    html = suite.path / "reports" / f"pvepatch-{name}.html"
    result = suite.runpytest(
        "--inventory", "inventory.yaml", *reportkit.FAST, *reportkit.PLUGINS,
        f"--html={html}", "--self-contained-html", f"--junitxml={html.with_suffix('.xml')}", *args,
    )  # fmt: skip
    return result, html


def fleets(suite: pytest.Pytester) -> dict[str, dict]:
    """What each process sent to its fake fleet, by worker id ("main": the controller)."""
    out = {
        p.stem.removeprefix("fleet-"): json.loads(p.read_text())
        for p in suite.path.glob("fleet-*.json")
    }
    for p in suite.path.glob("fleet-*.json"):
        p.unlink()
    return out


def normal(value):
    """A record without what differs between two equal runs: times, run ids, boot ids."""
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [normal(v) for v in value]
    if isinstance(value, str):
        value = re.sub(r"uptime: \d+", "uptime: <s>", value)
        value = RUN.sub("(run)", UNIT.sub(r"\1-<unit>", UUID.sub("<uuid>", value)))
        return re.sub(r"pvepatch-\w+\.files/", "", value)
    return value


def first_difference(a, b, path="") -> str | None:
    """Where two records first differ (a path and both values), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = first_difference(a.get(key), b.get(key), f"{path}/{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for n, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}[{n}]")
            if found:
                return found
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


def vm_records(html: Path) -> dict[tuple[str, str], dict]:
    records = ledger.read(html.with_suffix(".jsonl"))
    return {(r["vm"], r["stage"]): normal(r) for r in records if r["type"] == "stage"}


def junit(html: Path) -> list[tuple]:
    root = ET.parse(html.with_suffix(".xml")).getroot()
    return sorted(
        (
            case.get("classname"),
            case.get("name"),
            tuple(child.tag for child in case if child.tag != "properties"),
            tuple(
                sorted(
                    (p.get("name"), UUID.sub("<uuid>", p.get("value")))
                    for p in case.iter("property")
                )
            ),
        )
        for case in root.iter("testcase")
    )


def summary(result: pytest.RunResult) -> list[str]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if re.match(r"=+ pvepatch =+", line))
    return [line for line in lines[start + 1 :] if not line.startswith("=")][: len(VMS) + 1]


@pytest.mark.parametrize(("mode", "workers"), [("patch", "2"), ("verify", "3")])
def test_one_record_under_xdist_equal_to_the_serial_runs(suite, mode, workers):
    serial, serial_html = run(suite, "serial", "-m", mode)
    serial_fleet = fleets(suite)["main"]
    assert serial.ret == 0, serial.stdout.str()
    result, html = run(suite, "parallel", "-m", mode, "-n", workers)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([f"*{workers} workers*"])
    by_worker = fleets(suite)
    # Each VM's commands went to one worker only: its group; the workers touched nothing else.
    sent = {w: f["commands"] for w, f in by_worker.items() if w != "main"}
    for vmid, vm in enumerate(VMS, 101):
        on = [w for w, cmds in sent.items() if any(h == vm or f" {vmid}" in c for h, c in cmds)]
        assert len(on) == 1, (vm, on)
    assert len([w for w, cmds in sent.items() if cmds]) >= 2  # really in parallel
    assert by_worker["main"]["commands"] == []  # the controller sends nothing
    # One report, one ledger, one JUnit file, by the controller; nothing else in reports/.
    written = sorted(p.name for p in (suite.path / "reports").iterdir())
    assert [n for n in written if "parallel" in n] == [
        "pvepatch-parallel.files", "pvepatch-parallel.html", "pvepatch-parallel.jsonl",
        "pvepatch-parallel.xml",
    ] if mode == "patch" else ["pvepatch-parallel.html", "pvepatch-parallel.jsonl", "pvepatch-parallel.xml"]  # fmt: skip
    assert (
        len(written) == len([n for n in written if "serial" in n or "parallel" in n]) + 1
    )  # index
    # The terminal summary names every VM with its verdict and the workers' mutating commands.
    mutating = sum(len(f["mutating"]) for w, f in by_worker.items() if w != "main")
    assert mutating == len(serial_fleet["mutating"]) == (0 if mode == "verify" else mutating)
    assert summary(result) == summary(serial)
    assert summary(result)[0] == f"mode: {mode}; mutating commands sent: {mutating}"
    assert [line.split(":")[1].strip() for line in summary(result)[1:]] == ["ok"] * len(VMS)
    # The ledger, JUnit and HTML: the serial run's content (ordering and timing apart).
    parallel, serial = vm_records(html), vm_records(serial_html)
    assert parallel.keys() == serial.keys()
    assert not first_difference(parallel, serial)
    assert len(vm_records(html)) == len(VMS) * (len(reportkit.STAGES) if mode == "patch" else 2)
    assert junit(html) == junit(serial_html)
    records = ledger.read(html.with_suffix(".jsonl"))
    assert records[0]["type"] == "run_start" and records[0]["mode"] == mode
    assert records[0]["tests"] == ledger.read(serial_html.with_suffix(".jsonl"))[0]["tests"]
    end = records[-1]
    assert end["verdict"] == "passed" and end["mutating_commands_sent"] == mutating
    assert not any("@" in t["name"] for r in records if r["type"] == "stage" for t in r["tests"])
    page = html.read_text()
    assert page.count('class="pvepatch-down"') == (len(VMS) if mode == "patch" else 0)
    for vm in VMS:
        assert f'id="vm-{vm}"' in page


def test_a_vm_left_down_on_a_worker_is_loud_on_the_controller(suite, monkeypatch):
    """pihole is left down and keeps its slot to the end; with a budget of 2 pbs still gets one
    whichever worker restarts first (with 1, pbs is refused when pihole failed first)."""
    monkeypatch.setenv("PVEPATCH_FAKE_FAULTS", "pihole:start_fails")
    result, html = run(suite, "down", "-m", "patch", "-n", "2", "--max-down", "2")
    result.stdout.fnmatch_lines(
        ["*pihole (VM 102 on pve): LEFT DOWN*", "*!!! VM pihole IS NOT RUNNING*qm start 102*"]
    )
    result.stdout.fnmatch_lines(["*pbs (VM 101 on pve): ok*"])
    end = ledger.read(html.with_suffix(".jsonl"))[-1]
    assert list(end["left_down"]) == ["pihole"]
    assert end["vms"]["pihole"]["verdict"] == "left down"


def test_a_serial_runs_progress_reaches_the_terminal_while_pytest_captures(suite, monkeypatch):
    """A real process (pytest's fd capture on, as for an operator): a line said inside a test,
    here by the SIGTERM handler during pihole's shutdown, is on the terminal, not in the
    test's captured output (found by the lab's SIGTERM test)."""
    monkeypatch.setenv("PVEPATCH_FAKE_FAULTS", "pihole:sigterm_at=shutdown")
    html = suite.path / "reports" / "pvepatch-serial.html"
    result = suite.runpytest_subprocess(
        "--inventory", "inventory.yaml", *reportkit.FAST, *reportkit.PLUGINS, f"--html={html}",
        "-m", "patch", timeout=120,
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(
        [
            "pvepatch: SIGTERM received: no new action starts*",
            "pvepatch: down now: pihole*",
            "*INTERRUPTED (SIGTERM)*",
            "*pihole (VM 102 on pve): ok*",
        ]
    )


def test_a_workers_progress_reaches_the_controllers_terminal(suite):
    """Workers' output is not shown by xdist: their waits are relayed by the controller. Here the
    non-canary VMs wait for the canary pbs (on another worker), and say so."""
    result, html = run(suite, "canary", "-m", "patch", "-n", "2", "--canary", "1")
    assert result.ret == 0, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["pvepatch: pihole*: waiting for the canary VM(s) pbs to pass"])


@pytest.mark.parametrize("dist", ["each", "loadscope", "loadfile", "worksteal"])
def test_other_dist_modes_are_refused_before_anything_is_touched(suite, dist):
    result, html = run(suite, "refused", "-m", "patch", "-n", "2", "--dist", dist)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--dist {dist} is refused*loadgroup*Nothing was touched*"])
    assert not (suite.path / "reports").exists() and not list(suite.path.glob("fleet-*.json"))


def test_plain_n_and_explicit_loadgroup_both_group_by_vm(suite):
    result, _ = run(suite, "lg", "-m", "verify", "-n", "2", "--dist", "loadgroup", "-v")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*scheduling tests via VMGroupScheduling*"])
    # the terminal shows the node ids of a serial run (xdist's `@<vm>` suffix is taken off)
    assert re.search(
        r"PASSED tests_patch/test_10_preflight.py::test_vm_is_running\[pbs\]\s", result.stdout.str()
    )
    assert "[pbs]@pbs" not in result.stdout.str()


def test_two_runs_in_the_same_second_keep_their_own_files(suite, monkeypatch):
    from pvepatch.plugin import reporting

    monkeypatch.setattr(reporting, "_stamp", lambda: "20260101-000000")
    args = ["--inventory", "inventory.yaml", *reportkit.FAST, *reportkit.PLUGINS, "-m", "verify"]
    for _ in range(2):
        assert suite.runpytest(*args).ret == 0
    reports = suite.path / "reports"
    for suffix in (".html", ".jsonl", ".xml"):
        names = sorted(p.name for p in reports.glob(f"*{suffix}") if p.name != "index.html")
        assert names == [f"pvepatch-20260101-000000-verify{suffix}",
                         f"pvepatch-20260101-000000_2-verify{suffix}"]  # fmt: skip
    first, second = (ledger.read(reports / f"{stem}.jsonl") for stem in (
        "pvepatch-20260101-000000-verify", "pvepatch-20260101-000000_2-verify"))  # fmt: skip
    assert [r["type"] for r in first].count("run_start") == 1  # not appended to by the second
    assert first[0]["run_id"] != second[0]["run_id"]


def test_the_vm_of_a_node_id():
    from pvepatch.plugin.schedule import vm_of_nodeid

    vms = ["pihole-backup", "pihole", "pbs"]  # longest first, as the scheduler keeps them
    assert vm_of_nodeid("t.py::test_x[pihole-backup]", vms) == "pihole-backup"
    assert vm_of_nodeid("t.py::test_x[pihole]", vms) == "pihole"
    assert vm_of_nodeid("t.py::test_x[pihole-udp]", vms) == "pihole"
    assert vm_of_nodeid("t.py::test_x[udp-pbs]", vms) == "pbs"
    assert vm_of_nodeid("t.py::test_x[other]", vms) is None
    assert vm_of_nodeid("t.py::test_x", vms) is None


def test_a_record_survives_the_wire_and_its_down_window():
    from pvepatch.cycle.record import (
        RestartOutcome,
        VMRecord,
        down_window,
        record_from_wire,
        record_to_wire,
    )
    from pvepatch.inventory import ProxmoxHost, SSHSpec, Target

    target = Target("pbs", 101, ProxmoxHost("pve", SSHSpec("127.0.0.1")), SSHSpec("127.0.0.1"))
    record = VMRecord(target, restart=RestartOutcome("shutdown"))
    record.restart.times = {"shutdown_sent": 10.0, "stopped": 12.0, "agent_back": 30.0}
    record.notes.append("a note")
    record.outcomes["x"] = ("error", RuntimeError("stays in the worker"))
    back = record_from_wire(record_to_wire(record), target)
    assert back.target is target and back.notes == ["a note"] and back.outcomes == {}
    assert back.restart == record.restart
    assert down_window(back.restart) == (10.0, 30.0)
    back.restart.times.update(down=9.0, healthy=31.0, port_back=40.0)
    assert down_window(back.restart) == (9.0, 31.0)
    assert down_window(RestartOutcome("shutdown")) is None
    with pytest.raises(ValueError):
        record_from_wire(record_to_wire(record), Target("x", 1, target.proxmox, target.ssh))


def test_snapshots_and_a_rollback_under_workers(suite, monkeypatch):
    """-n 2: every VM snapshotted once with the run's one name, whatever worker has it; the bad
    update rolled back on the worker that patched it; the controller's summary says so."""
    monkeypatch.setenv("PVEPATCH_FAKE_FAULTS", "pbs:bad_update")
    result, _ = run(suite, "snap", "-m", "patch", "-n", "2", "--snapshot", "--rollback-on-failure")
    sent = [c for f in fleets(suite).values() for _, c in f["commands"]]
    snaps = [c.split() for c in sent if c.startswith("qm snapshot ")]
    assert sorted(s[2] for s in snaps) == ["101", "102", "103"]
    assert len({s[3] for s in snaps}) == 1, snaps  # one name: the controller's start time
    assert [c for c in sent if c.startswith("qm rollback ")] == [f"qm rollback 101 {snaps[0][3]}"]
    lines = summary(result)
    assert any("pbs (VM 101 on pve): ROLLED BACK" in line for line in lines), lines
    assert any("pihole (VM 102 on pve): ok" in line for line in lines), lines
