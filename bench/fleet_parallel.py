"""Benchmark: the 5-VM lab patched serially and under pytest-xdist, against the irreducible time.

Run on an up lab (`python -m pvelab up`): PYTHONPATH=lib .venv/bin/python bench/fleet_parallel.py
(about 15 minutes under TCG). Every run restarts all five VMs; the fleet is not reset between
runs, so apt has the same (small) work in each. For each run it reads the run's own ledger:

- wall: pytest's start to its end;
- irreducible: the sum over VMs of its apt run (the patch stage) plus its shutdown-to-SSH time
  (restart events), i.e. what a perfect serial tool would still have to wait for;
- the max number of VMs down at once, sampled every 0.5 s by the lab (pvelab.fleet.sampler).

Writes bench/results/fleet_parallel-<date>.json and prints a Markdown table.

`--fresh`: the patch runs on a fresh fleet instead (the lab reset before each run, so apt has the
real upgrades to do): serial, `-n 2` and `-n 5`, all with `--max-down 1` (about 20 minutes);
writes fleet_parallel-fresh-<date>.json.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pvelab.fleet.lab import Lab
from pvelab.fleet.sampler import sampling

PROJECT = Path(__file__).resolve().parents[1]
RUNS = [
    ("verify serial", ["-m", "verify"]),
    ("verify -n 5", ["-m", "verify", "-n", "5"]),
    ("patch serial", ["-m", "patch"]),
    ("patch -n 5 --max-down 1", ["-m", "patch", "-n", "5", "--max-down", "1"]),
    ("patch -n 5 --max-down 2", ["-m", "patch", "-n", "5", "--max-down", "2"]),
]
FRESH_RUNS = [
    ("fresh patch serial", ["-m", "patch"]),
    ("fresh patch -n 2", ["-m", "patch", "-n", "2"]),
    ("fresh patch -n 5", ["-m", "patch", "-n", "5"]),
]


def run(lab: Lab, args: list[str]) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="pvepatch-bench-"))
    cmd = [sys.executable, "-m", "pytest", f"--inventory={lab.inventory_path}", "-q", "-p",
           "no:cacheprovider", *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "lib")}
    with sampling(lab, 0.5) as samples:
        began = time.monotonic()
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
        wall = time.monotonic() - began
    ledger = next((workdir / "reports").glob("*.jsonl"))
    records = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    apt = restart = 0.0
    seen_after: dict[str, float] = {}  # pvepatch's "SSH back" minus the sampler's "up again"
    intervals = samples.down_intervals()
    for r in records:
        if r["type"] != "stage":
            continue
        if r["stage"] == "patch":
            apt += r["duration_s"]
        if r["stage"] == "restart":
            events = {e["event"]: e["after_s"] for e in r["facts"]["restart"]["events"]}
            restart += events.get("ssh_back", 0.0)
            back = next(
                (e["time"] for e in r["facts"]["restart"]["events"] if e["event"] == "ssh_back"),
                None,
            )
            ends = [i.end for i in intervals.get(r["vm"], []) if not i.open]
            if back and ends:
                seen = dt.datetime.fromisoformat(back).timestamp()
                seen_after[r["vm"]] = round(seen - min(ends, key=lambda e: abs(e - seen)), 2)
    return {
        "args": args,
        "rc": proc.returncode,
        "wall_s": round(wall, 1),
        "irreducible_s": round(apt + restart, 1),
        "apt_s": round(apt, 1),
        "shutdown_to_ssh_s": round(restart, 1),
        "max_down": samples.max_down(),
        "ssh_seen_after_sampler_s": seen_after,
        "piholes_down_together": samples.ever_down_together(["pihole", "pihole-backup"]),
        "tail": proc.stdout[-600:],
    }


def main() -> None:
    lab = Lab()
    fresh = "--fresh" in sys.argv[1:]
    machine = {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "date": dt.date.today().isoformat(),
    }
    name = f"fleet_parallel-{'fresh-' if fresh else ''}{machine['date']}.json"
    out = PROJECT / "bench" / "results" / name
    results: dict[str, dict] = {}
    for title, args in FRESH_RUNS if fresh else RUNS:
        if fresh:
            lab.reset(log=lambda line: print(f"[pvelab] {line}", flush=True))
        results[title] = run(lab, args)
        print(f"{title}: {results[title]['wall_s']} s, rc {results[title]['rc']}", flush=True)
        out.write_text(json.dumps({"machine": machine, "runs": results}, indent=1) + "\n")
    print(
        "| run | wall s | irreducible s (apt + shutdown-to-SSH) | wall / irreducible | max down | rc |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        ratio = r["wall_s"] / r["irreducible_s"] if r["irreducible_s"] else float("nan")
        print(f"| {name} | {r['wall_s']} | {r['irreducible_s']} | {ratio:.2f} | "
              f"{r['max_down']} | {r['rc']} |")  # fmt: skip
    print(f"written: {out}")


if __name__ == "__main__":
    main()
