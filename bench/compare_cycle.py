"""Benchmark: this pvepatch against a baseline commit, on the same lab, in the same session.

Run: PYTHONPATH=lib .venv/bin/python bench/compare_cycle.py BASELINE_CHECKOUT  (about 35 minutes)
BASELINE_CHECKOUT is a work tree of the baseline commit (`git worktree add /tmp/base <commit>`).
For each of baseline and current, in turn: a fresh fleet (`pvelab reset`), `pytest -m patch`,
then `pytest -m verify`; wall time, exit status, tests, qm calls and hypervisor downtime per VM.
Absolute times drift on shared machines: compare the two columns, not with older results.
Writes bench/results/compare_cycle-<date>.json and prints a Markdown table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from pvelab.fleet.lab import Lab

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "bench"))
from lab_cycle import downtimes  # noqa: E402


def pvepatch(checkout: Path, lab: Lab, mark: str) -> dict[str, object]:
    """One `pytest -m MARK` of the pvepatch in `checkout` (its lib/, its conftest and stages)."""
    env = dict(os.environ, PYTHONPATH=str(checkout / "lib"), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    cmd = [
        sys.executable, "-m", "pytest", "-m", mark, f"--inventory={lab.inventory_path}", "-q",
        "-p", "no:cacheprovider", "-p", "pytest_html.plugin", "-p", "pytest_metadata.plugin",
    ]  # fmt: skip
    began = time.monotonic()
    proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - began
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", tail)}
    return {"s": round(seconds, 1), "rc": proc.returncode, "tests": counts, "summary": tail}


def variant(checkout: Path, lab: Lab) -> dict[str, object]:
    lab.reset(log=lambda line: None)  # an unpatched, fault-free fleet
    mark = len(lab.qm_log())
    patch = pvepatch(checkout, lab, "patch")
    calls = lab.qm_log()[mark:]
    result: dict[str, object] = {
        "patch": patch,
        "qm_calls_in_patch": len(calls),
        "downtime_s": downtimes(lab, mark),
        "verify": pvepatch(checkout, lab, "verify"),
    }
    return result


def main() -> None:
    baseline = Path(sys.argv[1]).resolve()
    commit = subprocess.run(
        ["git", "-C", str(baseline), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    current = subprocess.run(
        ["git", "-C", str(PROJECT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    lab = Lab()
    results: dict[str, object] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.node()} ({os.cpu_count()} cores), QEMU under TCG",
        "baseline": {"commit": commit, **variant(baseline, lab)},
        "current": {"commit": current, **variant(PROJECT, lab)},
    }
    out = PROJECT / "bench" / "results" / f"compare_cycle-{results['date']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    base, cur = results["baseline"], results["current"]
    print(f"\n| | baseline {commit} | current {current} |\n|---|---|---|")
    for key in ("patch", "verify"):
        print(
            f"| `pytest -m {key}`, 5 VMs | {base[key]['s']} s ({base[key]['summary']}) "  # type: ignore[index]
            f"| {cur[key]['s']} s ({cur[key]['summary']}) |"
        )  # type: ignore[index]
    print(
        f"| qm calls in the patch run | {base['qm_calls_in_patch']} | {cur['qm_calls_in_patch']} |"
    )  # type: ignore[index]


if __name__ == "__main__":
    main()
