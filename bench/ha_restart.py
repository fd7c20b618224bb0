"""Benchmark: what restarting an HA-managed VM through HA costs against a plain restart.

Run on an up lab (`python -m pvelab up`), from the project root:
    PYTHONPATH=lib .venv/bin/python bench/ha_restart.py [ROUNDS]
Each round (default 2), alternating so the machine's drift falls on both alike:

- plain: `-m patch --limit pbs` with pbs not HA-managed (qm shutdown waits for the guest, then
         qm start);
- ha:    the same with pbs HA-managed (fault ha-managed; the lab's CRM/LRM in PVE's 10 s rounds):
         qm only queues each request, pvepatch waits until HA and qm status agree.

From each run's ledger: the wall time (run_start to run_end), the restart stage, the time the VM
was down (shutdown sent to healthy) and each restart event's seconds after the shutdown was sent.
Writes bench/results/ha_restart-<date>.json and prints a Markdown table.
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
import time
from pathlib import Path

from pvelab.fleet.lab import Lab

PROJECT = Path(__file__).resolve().parents[1]
VM, VMID = "pbs", 101
CLUSTER_RESOURCES = [
    "pvesh",
    "get",
    "/cluster/resources",
    "--type",
    "vm",
    "--output-format",
    "json",
]


def ha_managed(lab: Lab, on: bool) -> None:
    listed = f"vm:{VMID}" in lab.pve_run(["ha-manager", "config"]).stdout
    if on and not listed:
        lab.fault("ha-managed", VM)
    elif not on and listed:
        assert lab.pve_run(["ha-manager", "remove", f"vm:{VMID}"]).ok
    # The CRM carries an add or a remove out in its next round: a run started before that sees
    # the old HA state (pvepatch then restarts by what it sees right before the restart).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = lab.pve_run(CLUSTER_RESOURCES).stdout
        entry = next((r for r in json.loads(out or "[]") if r.get("vmid") == VMID), {})
        if bool(entry.get("hastate")) == on:
            return
        time.sleep(1)
    raise SystemExit(f"HA did not {'take' if on else 'release'} vm:{VMID} within 60 s")


def one_run(lab: Lab, kind: str) -> dict:
    ha_managed(lab, kind == "ha")
    workdir = Path(tempfile.mkdtemp(prefix="pvepatch-bench-"))
    cmd = [sys.executable, "-m", "pytest", f"--inventory={lab.inventory_path}", "-q", "-p",
           "no:cacheprovider", "-m", "patch", "--limit", VM]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "lib")}
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    ledger = next((workdir / "reports").glob("*.jsonl"))
    records = [json.loads(line) for line in ledger.read_text().splitlines() if line]
    start = next(r for r in records if r["type"] == "run_start")["ts"]
    end = next(r for r in records if r["type"] == "run_end")["ts"]
    stage = next(r for r in records if r["type"] == "stage" and r["stage"] == "restart")
    restart = (stage.get("facts") or {}).get("restart") or {}
    return {
        "kind": kind,
        "rc": proc.returncode,
        "wall_s": round(end - start, 1),
        "restart_stage_s": round(stage["duration_s"], 1) if "duration_s" in stage else None,
        "down_s": (restart.get("down") or {}).get("seconds"),
        "events": {e["event"]: e.get("after_s") for e in restart.get("events", [])},
        "verdict": proc.stdout.strip().splitlines()[-2:],
    }


def wall(runs: list[dict], kind: str) -> list[float]:
    """The wall times of the runs of `kind` that passed (a failed run ends early)."""
    return [r["wall_s"] for r in runs if r["kind"] == kind and r["rc"] == 0]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    lab = Lab()
    runs = []
    try:
        for n in range(rounds):
            for kind in ("plain", "ha"):
                run = one_run(lab, kind)
                print(n, json.dumps(run), flush=True)
                runs.append(run)
    finally:
        ha_managed(lab, False)
    summary = {
        kind: {
            "wall_s_median": statistics.median(ok) if (ok := wall(runs, kind)) else None,
            "down_s": [r["down_s"] for r in runs if r["kind"] == kind and r["rc"] == 0],
            "failed_runs": sum(1 for r in runs if r["kind"] == kind and r["rc"] != 0),
        }
        for kind in ("plain", "ha")
    }
    out = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, TCG",
        "ha_round_s": float(os.environ.get("PVELAB_HA_ROUND", "10")),
        "commit": subprocess.run(
            ["git", "-C", str(PROJECT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip(),  # fmt: skip
        "runs": runs,
        "summary": summary,
    }
    path = PROJECT / "bench" / "results" / f"ha_restart-{out['date']}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwritten {path}\n")
    print("| run | wall | restart stage | down (sent to healthy) | events (s after shutdown) |")
    print("|---|---|---|---|---|")
    for r in runs:
        events = ", ".join(f"{k} {v}" for k, v in r["events"].items())
        print(f"| {r['kind']} | {r['wall_s']} s | {r['restart_stage_s']} s | {r['down_s']} s | "
              f"{events} |")  # fmt: skip


if __name__ == "__main__":
    main()
