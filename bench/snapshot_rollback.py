"""Benchmark: what --snapshot adds to a VM's patch cycle, and how long a rollback takes.

Run on an up lab (`python -m pvelab up`), from the project root:
    PYTHONPATH=lib .venv/bin/python bench/snapshot_rollback.py [ROUNDS]
grafana is reset and given the fault bad-update first (its every update then breaks its agent
and is rolled back, the same work each round). Each round, in this order, alternating so the
machine's drift falls on all three alike (default 2 rounds; about 4 minutes a round under TCG):

- plain:    `-m patch --limit pbs` (the baseline: the cycle without a snapshot);
- snapshot: `-m patch --limit pbs --snapshot` (the same cycle with its snapshot stage, and the
            pruning of the previous round's snapshot);
- rollback: `-m patch --limit grafana --snapshot --rollback-on-failure`.

From each run's ledger and the stand-in's qm.log: the wall time (run_start to run_end), the
snapshot stage, `qm snapshot`, `qm delsnapshot`, `qm rollback`, the rollback stage, the time from
`qm rollback` sent to the VM healthy again, and for comparison a restart's shutdown sent to
healthy. Writes bench/results/snapshot_rollback-<date>.json and prints a Markdown table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from pvelab.fleet.lab import Lab

PROJECT = Path(__file__).resolve().parents[1]
KINDS = {
    "plain": ["--limit", "pbs"],
    "snapshot": ["--limit", "pbs", "--snapshot"],
    "rollback": ["--limit", "grafana", "--snapshot", "--rollback-on-failure"],
}


def qm_seconds(lab: Lab, mark: int, verb: str) -> list[float]:
    return [
        round(
            (
                dt.datetime.fromisoformat(c["end"]) - dt.datetime.fromisoformat(c["start"])
            ).total_seconds(),
            2,
        )
        for c in lab.qm_log()[mark:]
        if c["argv"][:1] == [verb]
    ]


def one_run(lab: Lab, kind: str) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="pvepatch-bench-"))
    mark = len(lab.qm_log())
    cmd = [sys.executable, "-m", "pytest", f"--inventory={lab.inventory_path}", "-q", "-p",
           "no:cacheprovider", "-m", "patch", *KINDS[kind]]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "lib")}
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    ledger = next((workdir / "reports").glob("*.jsonl"))
    records = [json.loads(line) for line in ledger.read_text().splitlines() if line]
    start = next(r for r in records if r["type"] == "run_start")["ts"]
    end = next(r for r in records if r["type"] == "run_end")["ts"]
    stages = {r["stage"]: r for r in records if r["type"] == "stage"}
    result = {
        "kind": kind,
        "rc": proc.returncode,
        "wall_s": round(end - start, 1),
        "snapshot_stage_s": stage_seconds(stages.get("snapshot")),
        "rollback_stage_s": stage_seconds(stages.get("rollback")),
        "qm_snapshot_s": qm_seconds(lab, mark, "snapshot"),
        "qm_delsnapshot_s": qm_seconds(lab, mark, "delsnapshot"),
        "qm_rollback_s": qm_seconds(lab, mark, "rollback"),
        "verdict": proc.stdout.strip().splitlines()[-2:],
    }
    for key, stage in (("restart_down_s", "restart"), ("rollback_down_s", "rollback")):
        facts = (stages.get(stage) or {}).get("facts", {})
        down = (facts.get("rollback") if stage == "rollback" else facts.get("restart")) or {}
        result[key] = (down.get("down") or {}).get("seconds")
    return result


def stage_seconds(record: dict | None) -> float | None:
    return round(record["duration_s"], 1) if record and "duration_s" in record else None


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    lab = Lab()
    lab.reset(["grafana"], log=print)
    lab.fault("bad-update", "grafana")
    runs = []
    for n in range(rounds):
        for kind in KINDS:
            run = one_run(lab, kind)
            print(n, json.dumps(run), flush=True)
            runs.append(run)
    summary = {}
    for kind in KINDS:
        mine = [r for r in runs if r["kind"] == kind]
        summary[kind] = {
            "wall_s_median": statistics.median(r["wall_s"] for r in mine),
            "walls": [r["wall_s"] for r in mine],
        }
    out = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, TCG",
        "commit": subprocess.run(
            ["git", "-C", str(PROJECT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip(),  # fmt: skip
        "runs": runs,
        "summary": summary,
    }
    path = PROJECT / "bench" / "results" / f"snapshot_rollback-{out['date']}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwritten {path}\n")
    print("| run | wall (each) | snapshot stage | qm snapshot | qm delsnapshot | qm rollback | "
          "down (restart / rollback) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['kind']} | {r['wall_s']} s | {r['snapshot_stage_s']} | {r['qm_snapshot_s']} "
              f"| {r['qm_delsnapshot_s']} | {r['qm_rollback_s']} | {r['restart_down_s']} / "
              f"{r['rollback_down_s']} |")  # fmt: skip


if __name__ == "__main__":
    main()
