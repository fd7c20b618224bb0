"""A simulated fleet of 200 VMs on 4 Proxmox hosts, patched by the real plugin under pytest-xdist.

The real stages (tests_patch/), the real plugin, the real slot script and real xdist workers run
against fake hosts (bench/simfleet.py) whose shutdown, boot, agent and apt take the lab's measured
times, drawn per VM from a seed, with time running `--scale` times faster in every process. Each
fake VM logs when it is down (from `qm shutdown` received until its agent answers after the boot);
this script then checks, over all workers, that no more than --max-down VMs were ever down at once
and never two of a redundancy group, and compares the schedule with its lower bound.

    PYTHONPATH=lib /work/main/.venv/bin/python bench/simulate_fleet.py

Writes bench/results/simulate_fleet-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import simcheck

ROOT = Path(__file__).resolve().parents[1]
# the lab's measured times (bench/RESULTS.md, 2026-11-27), seconds
SHUTDOWN = (2.2, 2.8)  # `qm shutdown` sent to stopped: 2.5 s
BOOT = (25.0, 35.0)  # `qm start` to SSH
AGENT = (1.0, 2.0)  # SSH to the agent answering
APT = (7.7, 10.5)  # the apt run of the patch stage


def plan(n_vms: int, n_hosts: int, pairs: int, faults: dict[str, int], seed: int) -> dict:
    """Each VM's Proxmox host, delays and faults; redundancy pairs (half of them across hosts)."""
    rng = random.Random(seed)
    vms = []
    for i in range(n_vms):
        vms.append({
            "name": f"vm{i:03d}", "vmid": 1000 + i, "mac": f"bc:24:11:00:{i // 256:02x}:{i % 256:02x}",
            "pve": f"pve{i % n_hosts + 1}",
            "shutdown_seconds": round(rng.uniform(*SHUTDOWN), 2),
            "boot_seconds": round(rng.uniform(*BOOT), 2),
            "agent_seconds": round(rng.uniform(*AGENT), 2),
            "apt_seconds": round(rng.uniform(*APT), 2),
        })  # fmt: skip
    picked = rng.sample(range(n_vms), sum(faults.values()))
    for fault, count in faults.items():
        for i in picked[:count]:
            vms[i][fault] = fault != "ssh_after_boot"  # ssh_after_boot=False: never answers
        picked = picked[count:]
    groups: dict[str, list[str]] = {}
    for g in range(pairs):
        a = 2 * g * n_hosts  # pair a VM with the next (same host) or the one after (next host)
        b = a + (n_hosts if g % 2 == 0 else 1)
        groups[f"pair{g:02d}"] = [vms[a]["name"], vms[b]["name"]]
    return {"vms": vms, "groups": groups, "seed": seed}


def inventory(fleet: dict, n_hosts: int) -> str:
    group_of = {vm: g for g, members in fleet["groups"].items() for vm in members}
    pves = "".join(
        f"        pve{h + 1}: {{ansible_host: 127.0.0.1, ansible_port: {2200 + h}}}\n"
        for h in range(n_hosts)
    )
    hosts = ""
    for vm in fleet["vms"]:
        group = (
            f", pvepatch_redundancy_group: {group_of[vm['name']]}" if vm["name"] in group_of else ""
        )
        hosts += (
            f"        {vm['name']}: {{ansible_host: 127.0.0.1, ansible_port: {3000 + vm['vmid']}, "
            f"vmid: {vm['vmid']}, proxmox_host: {vm['pve']}{group}}}\n"
        )
    return (
        "all:\n  children:\n    proxmox:\n      hosts:\n" + pves
        + "    ubuntu_vms:\n      hosts:\n" + hosts
    )  # fmt: skip


def prepare(sim_dir: Path, fleet: dict, n_hosts: int) -> Path:
    run_dir = sim_dir / "run"
    shutil.copytree(ROOT / "tests_patch", run_dir / "tests_patch",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (run_dir / "inventory.yaml").write_text(inventory(fleet, n_hosts))
    (run_dir / "pytest.ini").write_text("[pytest]\ntestpaths = tests_patch\n")
    (run_dir / "conftest.py").write_text(
        "from simfleet import pytest_cmdline_main, pytest_sessionfinish  # noqa: F401\n"
    )
    (sim_dir / "state").mkdir()
    (sim_dir / "plan.json").write_text(json.dumps(fleet))
    return run_dir


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def run_once(args: argparse.Namespace, budget: int, workers: int, faults: dict[str, int],
             interrupt_after: int | None) -> dict:  # fmt: skip
    fleet = plan(args.vms, args.hosts, args.pairs, faults, args.seed + budget)
    sim_dir = Path(tempfile.mkdtemp(prefix="pvepatch-sim-"))
    run_dir = prepare(sim_dir, fleet, args.hosts)
    t0, m0 = time.time(), time.monotonic()
    (sim_dir / "clock.json").write_text(json.dumps({"t0": t0, "m0": m0, "scale": args.scale}))
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(str(ROOT / p) for p in ("lib", "bench", "tests/plugin")),
        PVEPATCH_SIM_DIR=str(sim_dir), PVEPATCH_SIM_SCALE=str(args.scale),
        PVEPATCH_SIM_T0=repr(t0), PVEPATCH_SIM_M0=repr(m0),
    )  # fmt: skip
    env.pop("PVEPATCH_INVENTORY", None)
    command = [sys.executable, "-m", "pytest", "-m", "patch", "-n", str(workers),
               "--max-down", str(budget), "--inventory", "inventory.yaml",
               "-p", "simclock", "-p", "no:cacheprovider", "-q"]  # fmt: skip
    print(f"K={budget} -n {workers} faults={faults} interrupt={interrupt_after}: {sim_dir}",
          flush=True)  # fmt: skip
    busy0, total0 = machine_busy()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with (sim_dir / "pytest.log").open("w") as log:
        proc = subprocess.Popen(command, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        interrupted_at = wait(proc, sim_dir, interrupt_after, args.timeout)
    wall = time.monotonic() - started
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1, total1 = machine_busy()
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    result = analyse(sim_dir, run_dir, fleet, budget, args.scale)
    result.update(
        budget=budget, workers=workers, vms=args.vms, pve_hosts=args.hosts, faults=faults,
        exit_status=proc.returncode, wall_real_s=round(wall, 1),
        wall_scaled_s=round(wall * args.scale, 0), cpu_s=round(cpu, 1),
        cores_used=round(cpu / wall, 2),
        machine_busy=round((busy1 - busy0) / max(1, total1 - total0), 2),
        sim_dir=str(sim_dir),
    )  # fmt: skip
    if interrupted_at is not None:
        result["interrupt"] = check_interrupt(sim_dir, run_dir, result, interrupted_at, args.scale)
    return result


def wait(proc: subprocess.Popen, sim_dir: Path, interrupt_after: int | None,
         timeout: float) -> float | None:  # fmt: skip
    """Wait for the run (SIGINT to its process group once `interrupt_after` VMs went down);
    the real time of the SIGINT, or None. A run past `timeout` is a deadlock: killed, reported."""
    deadline = time.monotonic() + timeout
    sent = None
    while proc.poll() is None:
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise SystemExit(f"DEADLOCK? the run took more than {timeout} s; see {sim_dir}")
        if interrupt_after is not None and sent is None:
            downs = [e for e in simcheck.read_events(sim_dir / "events.jsonl")
                     if e["event"] in simcheck.DOWN_STARTS]  # fmt: skip
            if len(downs) >= interrupt_after:
                os.killpg(proc.pid, signal.SIGINT)
                sent = time.time()
        time.sleep(0.05)
    return sent


def ledger_end(run_dir: Path) -> dict:
    ledgers = sorted((run_dir / "reports").glob("pvepatch-*.jsonl"))
    lines = ledgers[-1].read_text().splitlines() if ledgers else []
    return json.loads(lines[-1]) if lines else {}


def analyse(sim_dir: Path, run_dir: Path, fleet: dict, budget: int, scale: float) -> dict:
    events = simcheck.read_events(sim_dir / "events.jsonl")
    intervals = simcheck.down_intervals(events)
    out = simcheck.summary(intervals, fleet["groups"], budget)
    by_name = {vm["name"]: vm for vm in fleet["vms"]}
    restarted = {i.vm for i in intervals if i.closed and by_name[i.vm].get("ssh_after_boot", True)
                 and not by_name[i.vm].get("ignores_shutdown")}  # fmt: skip
    irreducible = sum(
        by_name[vm]["shutdown_seconds"] + by_name[vm]["boot_seconds"] + by_name[vm]["agent_seconds"]
        for vm in restarted
    )
    out["lower_bound_s"] = round(irreducible / budget, 1)
    out["ratio"] = round(out["span_s"] / out["lower_bound_s"], 3) if irreducible else None
    end = ledger_end(run_dir)
    verdicts: dict[str, int] = {}
    for vm in end.get("vms", {}).values():
        verdicts[vm.get("verdict", "?")] = verdicts.get(vm.get("verdict", "?"), 0) + 1
    out.update(verdicts=verdicts, left_down=sorted(end.get("left_down", [])),
               planned_faults={n: [k for k in ("start_fails", "ignores_shutdown", "apt_fails")
                                   if vm.get(k)] + ([] if vm.get("ssh_after_boot", True)
                                                    else ["ssh_after_boot=False"])
                               for n, vm in by_name.items()
                               if any(vm.get(k) for k in ("start_fails", "ignores_shutdown",
                                                          "apt_fails"))
                               or not vm.get("ssh_after_boot", True)})  # fmt: skip
    out["span_s"] = round(out["span_s"], 1)
    return out


def check_interrupt(sim_dir: Path, run_dir: Path, result: dict, sent: float, scale: float) -> dict:
    """After the SIGINT: every VM taken down is running (and answers) or reported left down."""
    final: dict[str, dict] = {}
    for path in sim_dir.glob("final-*.json"):
        final.update(json.loads(path.read_text()))
    events = simcheck.read_events(sim_dir / "events.jsonl")
    clock = json.loads((sim_dir / "clock.json").read_text())
    at = clock["t0"] + (sent - clock["t0"]) * scale  # the SIGINT on the virtual clock
    stranded = [vm for vm, st in final.items()
                if not (st["running"] and st["answers"]) and vm not in result["left_down"]]  # fmt: skip
    log = (sim_dir / "pytest.log").read_text()
    return {
        "exit_status_2": result["exit_status"] == 2,
        "vms_taken_down": len(final),
        "running_and_answering": sum(st["running"] and st["answers"] for st in final.values()),
        "reported_left_down": result["left_down"],
        "stranded": stranded,
        "summary_says_interrupted": "INTERRUPTED (SIGINT)" in log,
        "shutdowns_after_sigint": sorted(
            e["vm"] for e in events if e["event"] in simcheck.DOWN_STARTS and e["t"] > at
        ),
        "last_event_after_sigint_s": round(max(e["t"] for e in events) - at, 1) if events else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=20, help="redundancy pairs")
    parser.add_argument("--scale", type=float, default=50.0, help="time runs this much faster")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--budgets", default="1,2,4")
    parser.add_argument("--extra-workers", type=int, default=1, help="-n is K plus this")
    parser.add_argument("--interrupt-budget", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600.0, help="real seconds per run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    runs = []
    for budget in [int(b) for b in args.budgets.split(",") if b]:
        faults = {"apt_fails": 2, "ignores_shutdown": 2}
        if budget >= 2:  # a VM that does not come back keeps its slot until the run ends
            faults.update(start_fails=1, ssh_after_boot=1 if budget >= 4 else 0)
        runs.append(run_once(args, budget, budget + args.extra_workers, faults, None))
        print(json.dumps(runs[-1], indent=1)[:2000], flush=True)
    if args.interrupt_budget:
        k = args.interrupt_budget
        runs.append(run_once(args, k, k + args.extra_workers, {"apt_fails": 1}, 20))
        print(json.dumps(runs[-1], indent=1)[:2000], flush=True)
    out = args.out or ROOT / "bench" / "results" / f"simulate_fleet-{dt.date.today()}.json"
    out.write_text(json.dumps({"machine": machine(), "scale": args.scale, "seed": args.seed,
                               "runs": runs}, indent=1) + "\n")  # fmt: skip
    print(f"written {out}")


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 "?")  # fmt: skip
    mem = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))  # fmt: skip
    return {"nproc": os.cpu_count(), "cpu": model, "ram_gib": round(int(mem) / 2**20, 1),
            "python": platform.python_version(), "kernel": platform.release()}  # fmt: skip


if __name__ == "__main__":
    main()
