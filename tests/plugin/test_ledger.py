"""The JSON-lines ledger: written as the run goes, complete, and honest about an interruption."""

from __future__ import annotations

import re
import signal

import pytest
import reportkit
from pvepatch.audit import ledger

pytest_plugins = ["pytester"]


@pytest.fixture
def suite(pytester):
    return reportkit.make_suite(pytester)


def test_ledger_has_run_start_a_record_per_stage_per_vm_and_run_end(suite):
    fleet = reportkit.fleet_of(3)
    result, html = reportkit.run(suite, fleet, "-m", "patch")
    lines = html.with_suffix(".jsonl").read_text().splitlines()
    records = [ledger.read_line(line) for line in lines]  # every line parses on its own
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert records[0]["type"] == "run_start" and records[-1]["type"] == "run_end"
    assert records[0]["header"]["mode"] == "patch"
    stages = [(r["vm"], r["stage"]) for r in records if r["type"] == "stage"]
    assert stages == [
        (vm, stage) for vm in ("pbs", "pihole", "pihole-backup") for stage in reportkit.STAGES
    ]
    starts = [(r["vm"], r["stage"]) for r in records if r["type"] == "stage_start"]
    assert starts == stages
    tests = sum(len(r["tests"]) for r in records if r["type"] == "stage")
    assert tests == sum(result.parseoutcomes().values())
    end = records[-1]
    assert end["verdict"] == "passed" and end["exit_status"] == 0
    assert end["mutating_commands_sent"] == len(reportkit.mutating(fleet))
    patch = next(r for r in records if r["type"] == "stage" and r["stage"] == "patch")
    assert any(
        "-y" in c["command"] and "dist-upgrade" in c["command"] and c["transcript"]
        for c in patch["guest_commands"]
    )
    # every qm command the fake Proxmox host received is in the ledger, in its VM's stages, in
    # order; the cluster's questions (pvesh, pvecm: no vmid) are all there too
    cluster_logged = []
    for vm, vmid in (("pbs", 101), ("pihole", 102), ("pihole-backup", 103)):
        logged = [
            c["command"] for r in records if r.get("vm") == vm for c in r.get("qm_commands", [])
        ]
        received = [
            c for host, c in fleet.commands if host == "pve" and re.match(rf"qm .* {vmid}\b", c)
        ]
        assert [c for c in logged if c.startswith("qm ")] == received, vm
        cluster_logged += [c for c in logged if not c.startswith("qm ")]
    cluster_received = [c for host, c in fleet.commands if host == "pve" and c.startswith("pve")]
    assert sorted(cluster_logged) == sorted(cluster_received)
    assert cluster_received, "no proof asked the cluster"
    restart = next(r for r in records if r["type"] == "stage" and r["stage"] == "restart")
    verbs = [c["command"].split()[1] for c in restart["qm_commands"]]
    assert verbs.count("shutdown") == verbs.count("start") == 1
    assert verbs.index("shutdown") < verbs.index("start")


@pytest.mark.parametrize("at", ["start", "shutdown"])
def test_sigterm_during_a_restart_finishes_it_and_starts_nothing_new(suite, at):
    """SIGTERM inside pihole's restart: that restart runs to its end (started, checked), the
    next VM is not started, the run ends interrupted, and the ledger says all of it."""
    fleet = reportkit.fleet_of(3)
    fleet.vms["pihole"].sigterm_at = at  # SIGTERM at `qm <at> 102`
    handler = signal.getsignal(signal.SIGTERM)
    try:
        result, html = reportkit.run(suite, fleet, "-m", "patch", no_reraise_ctrlc=True)
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    records = ledger.read(html.with_suffix(".jsonl"))
    end = records[-1]
    assert end["type"] == "run_end" and end["verdict"] == "interrupted"
    assert end["vms"]["pihole"]["verdict"] == "passed"  # brought back and verified
    assert end["vms"]["pihole-backup"]["verdict"] == "not started"
    assert fleet.vms["pihole"].running and fleet.vms["pihole"].pid == 1001
    assert fleet.vms["pihole-backup"].pid == 1000  # nothing after the interruption
    assert not [c for h, c in fleet.commands if h == "pihole-backup" and "apt-get -y" in c]
    assert "interrupted" in html.read_text()
    result.stdout.fnmatch_lines(
        [
            "*SIGTERM received: no new action starts*",
            "*INTERRUPTED (SIGTERM)*",
            "*pihole (VM 102 on pve): ok*",
            "*pihole-backup (VM 103 on pve): NOT STARTED (not started: run interrupted (SIGTERM))*",
        ]
    )


def test_a_killed_run_leaves_valid_lines_and_a_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "run.jsonl"
    book = ledger.Ledger(path, "run-1")
    book.write("run_start", mode="patch")
    book.write("stage_start", vm="pbs", stage="restart")
    with path.open("a") as f:
        f.write('{"type": "stage", "vm": "pb')  # killed mid-write
    assert [r["type"] for r in ledger.read(path)] == ["run_start", "stage_start"]
    assert ledger.verdict(ledger.read(path)) == "incomplete (no run end: killed?)"
