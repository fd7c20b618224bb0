"""`python -m pvelab up|down|status|reset|fault <name> [<vm>]|faults|backup <vm>|sample`: the
lab's CLI."""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from pvelab.fleet import roster, sampler
from pvelab.fleet.faults import FAULTS
from pvelab.fleet.lab import Lab
from pvelab.paths import LabPaths
from pvelab.pve import backups
from pvelab.sshcmd import LabError


def _log(line: str) -> None:
    print(line, flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pvelab", description=__doc__)
    p.add_argument("--lab", help="lab directory (default $PVELAB_DIR or <project>/.lab)")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("up", "bring the lab up (idempotent)"), ("reset", "undo all faults")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--vms", help="comma-separated VM names (default $PVELAB_VMS or all)")
        cmd.add_argument("--timeout", type=float, help="seconds to wait for the guests")
    sub.add_parser("down", help="stop VMs (disks kept), PVE host sshd, repo server")
    st = sub.add_parser("status", help="daemons and VMs")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    fault = sub.add_parser("fault", help="inject a fault into a VM (or the cluster: no-quorum)")
    fault.add_argument("name", choices=sorted(FAULTS))
    fault.add_argument("vm", nargs="?", help="the VM (ignored by cluster faults)")
    sub.add_parser("faults", help="list the faults")
    backup = sub.add_parser("backup", help="a placeholder vzdump archive in storage `local`")
    backup.add_argument("vm")
    when = backup.add_mutually_exclusive_group()
    when.add_argument("--at", type=_iso_time, help="backup time (ISO 8601; default now)")
    when.add_argument("--age", type=_age, help="backup age, e.g. 3d, 12h, 90m, 30s")
    backup.add_argument("--notes", help="the backup's notes (first line shown in listings)")
    sample = sub.add_parser("sample", help="sample which VMs are down until SIGTERM/SIGINT")
    sample.add_argument("--interval", type=float, default=0.5, help="seconds between rounds")
    sample.add_argument("--out", required=True, help="JSON-lines file, one line per round")
    sample.add_argument("--vms", help="comma-separated VM names (default $PVELAB_VMS or all)")
    return p


def _iso_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc


def _age(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)([smhd])", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not an age like 3d, 12h, 90m, 30s: {text!r}")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


def make_backup(lab: Lab, args: argparse.Namespace) -> None:
    vm = roster.by_name(args.vm)
    when = args.at or datetime.now().astimezone() - (args.age or timedelta())
    archive = backups.create(lab.paths, vm.vmid, when, args.notes)
    print(f"{vm.name}: {backups.STORAGE}:backup/{archive.name} ({archive})")


def run_sampler(lab: Lab, args: argparse.Namespace) -> None:
    """Sample until SIGTERM or SIGINT, then print the summary (the file has every round)."""
    probe = sampler.LabProbe.of(lab, args.vms, args.interval)
    with open(args.out, "w") as out:
        run = sampler.Sampler(probe, args.interval, out)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: run.stopping.set())
        try:
            run.run()
        finally:
            probe.close()
    for line in run.samples.summary():
        print(line)


def print_status(status: dict) -> None:
    acc = status.get("accel") or {}
    reason = (str(acc.get("reason", "")).splitlines() or ["?"])[0]
    print(f"lab {status['lab']}  acceleration {acc.get('accel')} ({reason})")
    daemons = {f"{n}_sshd": d for n, d in status["nodes"].items()}
    daemons["repo_http"] = {"address": "127.0.0.1", **status["repo_http"]}
    for name, d in daemons.items():
        state = f"pid {d['pid']}" if d["pid"] else "down"
        print(f"  {name:<10} {d['address'] + ':' + str(d['port']):<16} {state}")
    print(f"  cluster    {'quorate' if status['quorate'] else 'NOT quorate (fault no-quorum)'}")
    print(
        f"  {'VM':<14} {'VMID':>4} {'node':<5} {'status':<8} {'SSH':>6} {'RSS MiB':>8} lock    agent"
    )
    for name, vm in status["vms"].items():
        if vm["configured"] or vm["pid"]:
            print(
                f"  {name:<14} {vm['vmid']:>4} {str(vm['node']):<5} {vm['status']:<8}"
                f" {vm['ssh_port']:>6} {str(vm['rss_mib']):>8} {str(vm['lock']):<7} {vm['agent']}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    lab = Lab(LabPaths(Path(args.lab).resolve()) if args.lab else None)
    try:
        if args.command == "up":
            kw = {"timeout": args.timeout} if args.timeout else {}
            lab.up(args.vms, log=_log, **kw)
        elif args.command == "reset":
            kw = {"timeout": args.timeout} if args.timeout else {}
            lab.reset(args.vms, log=_log, **kw)
        elif args.command == "down":
            lab.down(log=_log)
        elif args.command == "status":
            status = lab.status()
            if args.json:
                print(json.dumps(status, indent=2))
            else:
                print_status(status)
        elif args.command == "fault":
            result = lab.fault(args.name, args.vm, log=_log)
            if result is not None and result.stdout.strip():
                print(result.stdout.rstrip())
        elif args.command == "faults":
            for fault in FAULTS.values():
                scope = "guest" if fault.guest_script else "host"
                scope = "cluster" if fault.whole_cluster else scope
                print(f"{fault.name:<20} {scope:<7} {fault.summary}")
        elif args.command == "backup":
            make_backup(lab, args)
        elif args.command == "sample":
            run_sampler(lab, args)
    except LabError as exc:
        print(f"pvelab {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
