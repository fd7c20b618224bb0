"""Benchmark: the lab's image, boot and a whole patch cycle, measured on this machine.

Run: PYTHONPATH=lib .venv/bin/python bench/lab_cycle.py  (about 20 minutes under TCG)
Writes bench/results/lab_cycle-<date>.json and prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from pvelab.fleet.lab import Lab
from pvelab.fleet.roster import FLEET
from pvelab.image.build import ensure_image
from pvelab.procs import rss_kib

PROJECT = Path(__file__).resolve().parents[1]


def timed(fn, *args, **kwargs):
    began = time.monotonic()
    value = fn(*args, **kwargs)
    return value, time.monotonic() - began


def pvepatch(lab: Lab, mark: str) -> float:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        mark,
        f"--inventory={lab.inventory_path}",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    _, seconds = timed(subprocess.run, cmd, cwd=PROJECT, check=True, capture_output=True)
    return seconds


def downtimes(lab: Lab, since: int) -> dict[str, float]:
    """Per VM: from the start of `qm shutdown` to the end of `qm start` (hypervisor downtime)."""
    begin: dict[str, float] = {}
    result: dict[str, float] = {}
    for call in lab.qm_log()[since:]:
        verb, vmid = call["argv"][0], call["argv"][1] if len(call["argv"]) > 1 else ""
        when = dt.datetime.fromisoformat
        if verb == "shutdown":
            begin[vmid] = when(call["start"]).timestamp()
        elif verb == "start" and vmid in begin:
            result[vmid] = round(when(call["end"]).timestamp() - begin[vmid], 1)
    return result


def main() -> None:
    results: dict[str, object] = {
        "date": dt.date.today().isoformat(),
        "machine": platform.node(),
        "cpus": os.cpu_count(),
    }
    _, results["image_cached_s"] = timed(ensure_image, log=lambda line: None)
    lab = Lab()
    summary, results["lab_reset_up_s"] = timed(lab.reset, log=lambda line: None)
    results["accel"] = summary.get("accel")
    results["boot"] = {
        name: {"agent_s": vm["agent_s"], "ssh_s": vm["ssh_s"], "rss_mib": vm["rss_mib"]}
        for name, vm in summary["vms"].items()
    }
    mark = len(lab.qm_log())
    results["patch_cycle_5_vms_s"] = round(pvepatch(lab, "patch"), 1)
    results["downtime_s"] = downtimes(lab, mark)
    results["verify_5_vms_s"] = round(pvepatch(lab, "verify"), 1)
    rss = [rss_kib(lab.qemu_pid(vm)) or 0 for vm in FLEET]
    results["qemu_rss_mib_total"] = round(sum(rss) / 1024)
    out = PROJECT / "bench" / "results" / f"lab_cycle-{results['date']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
