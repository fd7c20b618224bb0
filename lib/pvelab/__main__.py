"""`python -m pvelab up|down|status|reset|fault <name> <vm>|faults|sample`: the lab's CLI."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from pvelab.fleet import sampler
from pvelab.fleet.faults import FAULTS
from pvelab.fleet.lab import Lab
from pvelab.paths import LabPaths
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
    fault = sub.add_parser("fault", help="inject a fault into a VM")
    fault.add_argument("name", choices=sorted(FAULTS))
    fault.add_argument("vm")
    sub.add_parser("faults", help="list the faults")
    sample = sub.add_parser("sample", help="sample which VMs are down until SIGTERM/SIGINT")
    sample.add_argument("--interval", type=float, default=0.5, help="seconds between rounds")
    sample.add_argument("--out", required=True, help="JSON-lines file, one line per round")
    sample.add_argument("--vms", help="comma-separated VM names (default $PVELAB_VMS or all)")
    return p


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
    for name in ("pve_sshd", "repo_http"):
        d = status[name]
        state = f"pid {d['pid']}" if d["pid"] else "down"
        print(f"  {name:<10} 127.0.0.1:{d['port']:<6} {state}")
    print(f"  {'VM':<14} {'VMID':>4} {'status':<8} {'SSH':>6} {'RSS MiB':>8} lock    agent")
    for name, vm in status["vms"].items():
        if vm["configured"] or vm["pid"]:
            print(
                f"  {name:<14} {vm['vmid']:>4} {vm['status']:<8} {vm['ssh_port']:>6}"
                f" {str(vm['rss_mib']):>8} {str(vm['lock']):<7} {vm['agent']}"
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
                print(f"{fault.name:<20} {scope:<6} {fault.summary}")
        elif args.command == "sample":
            run_sampler(lab, args)
    except LabError as exc:
        print(f"pvelab {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
