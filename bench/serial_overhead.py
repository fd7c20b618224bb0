"""Benchmark: what a serial `pytest -m patch` spends beyond the irreducible, baseline against current.

Run on an up lab (`python -m pvelab up`), from the project root:
    PYTHONPATH=lib .venv/bin/python bench/serial_overhead.py BASELINE_CHECKOUT [ROUNDS]
BASELINE_CHECKOUT is a work tree of the baseline commit (`git worktree add /tmp/base <commit>`).
Runs alternate, baseline then current, ROUNDS times (default 2; about 4.5 minutes a run under
TCG), on the fleet as it is (not reset: after the first cycle each run has the same small apt
work, and all five VMs restart each time). Alternating keeps the machine's drift out of the
comparison. From each run's own ledger:

- wall: run_start to run_end;
- irreducible: per VM, its patch stage plus its shutdown-to-SSH time (the definition of
  bench/fleet_parallel.py), and a strict one counting only the apt commands themselves (the
  mutating guest commands of the patch stage) instead of the whole patch stage;
- round trips: commands sent to the guests and to the Proxmox host, a batch counted once.

Writes bench/results/serial_overhead-<date>.json and prints a Markdown table.
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


def one_run(checkout: Path, lab: Lab) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="pvepatch-bench-"))
    cmd = [sys.executable, "-m", "pytest", f"--inventory={lab.inventory_path}", "-q", "-p",
           "no:cacheprovider", "-m", "patch"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(checkout / "lib")}
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    ledger = next((workdir / "reports").glob("*.jsonl"))
    records = [json.loads(line) for line in ledger.read_text().splitlines() if line]
    return measure(records) | {"rc": proc.returncode, "tail": proc.stdout[-300:]}


def measure(records: list[dict]) -> dict:
    start = next(r for r in records if r["type"] == "run_start")["ts"]
    end = next(r for r in records if r["type"] == "run_end")["ts"]
    patch = apt = boot = 0.0
    trips: dict[str, int] = {}
    for r in records:
        if r["type"] != "stage":
            continue
        commands = r.get("guest_commands", []) + r.get("qm_commands", [])
        batches = {c["batch"] for c in commands if c.get("batch")}
        single = [c for c in commands if not c.get("batch")]
        trips[r["stage"]] = trips.get(r["stage"], 0) + len(batches) + len(single)
        if r["stage"] == "patch":
            patch += r["duration_s"]
            apt += sum(c["duration_s"] for c in r.get("guest_commands", []) if c["mutating"])
        if r["stage"] == "restart":
            events = {e["event"]: e["after_s"] for e in r["facts"]["restart"]["events"]}
            boot += events.get("ssh_back", 0.0)
    wall = end - start
    return {
        "wall_s": round(wall, 1),
        "irreducible_s": round(patch + boot, 1),
        "strict_irreducible_s": round(apt + boot, 1),
        "ratio": round(wall / (patch + boot), 3),
        "strict_ratio": round(wall / (apt + boot), 3),
        "overhead_s": round(wall - patch - boot, 1),
        "round_trips": trips,
    }


def main() -> None:
    baseline = Path(sys.argv[1]).resolve()
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    lab = Lab()
    machine = {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "date": dt.date.today().isoformat(),
    }
    commits = {
        name: subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, text=True,
                             capture_output=True).stdout.strip()
        for name, path in (("baseline", baseline), ("current", PROJECT))
    }  # fmt: skip
    out = PROJECT / "bench" / "results" / f"serial_overhead-{machine['date']}.json"
    runs: dict[str, list[dict]] = {"baseline": [], "current": []}
    for i in range(rounds):
        for name, checkout in (("baseline", baseline), ("current", PROJECT)):
            runs[name].append(one_run(checkout, lab))
            r = runs[name][-1]
            print(f"round {i + 1} {name}: {r['wall_s']} s, ratio {r['ratio']}, rc {r['rc']}",
                  flush=True)  # fmt: skip
            out.write_text(json.dumps({"machine": machine, "commits": commits, "runs": runs},
                                      indent=1) + "\n")  # fmt: skip
    print("| | wall s | irreducible s | wall / irreducible | strict irreducible s | wall / strict "
          "| overhead s | round trips (preflight, agent, patch, restart, verify) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, results in runs.items():
        for r in results:
            t = r["round_trips"]
            trips = ", ".join(str(t.get(s, 0)) for s in
                              ("preflight", "guest_agent", "patch", "restart", "verify"))  # fmt: skip
            print(f"| {name} {commits[name]} | {r['wall_s']} | {r['irreducible_s']} | "
                  f"{r['ratio']} | {r['strict_irreducible_s']} | {r['strict_ratio']} | "
                  f"{r['overhead_s']} | {trips} |")  # fmt: skip
        print(f"| {name} median | {statistics.median(r['wall_s'] for r in results)} | | "
              f"{statistics.median(r['ratio'] for r in results)} | | "
              f"{statistics.median(r['strict_ratio'] for r in results)} | "
              f"{statistics.median(r['overhead_s'] for r in results)} | |")  # fmt: skip
    print(f"written: {out}")


if __name__ == "__main__":
    main()
