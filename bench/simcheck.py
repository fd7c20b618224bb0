"""What a simulated run did, from its fake VMs' events: down intervals, the most VMs down at
once (overall, per Proxmox host, per redundancy group) and the schedule against its lower bound."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

OPEN = float("inf")
DOWN_STARTS = {"shutdown", "stop"}
# the VM serves again (the agent answered after its boot), or it never went down (shutdown refused)
DOWN_ENDS = {"agent_back", "shutdown_failed"}


@dataclass(frozen=True)
class Interval:
    vm: str
    pve: str
    start: float
    end: float  # OPEN: still down when the run ended

    @property
    def closed(self) -> bool:
        return self.end != OPEN


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(events, key=lambda e: e["t"])


def down_intervals(events: list[dict]) -> list[Interval]:
    """Per VM, from the Proxmox host receiving `qm shutdown`/`qm stop` until the VM serves."""
    opened: dict[str, dict] = {}
    out: list[Interval] = []
    for e in events:
        if e["event"] in DOWN_STARTS:
            if e["vm"] in opened:  # a second shutdown while down: keep the first start
                continue
            opened[e["vm"]] = e
        elif e["event"] in DOWN_ENDS and e["vm"] in opened:
            start = opened.pop(e["vm"])
            out.append(Interval(e["vm"], e["pve"], start["t"], e["t"]))
    out += [Interval(vm, e["pve"], e["t"], OPEN) for vm, e in opened.items()]
    return sorted(out, key=lambda i: i.start)


def max_overlap(intervals: list[Interval]) -> tuple[int, float | None]:
    """The most intervals open at one moment, and when first (an end at t comes before a start
    at t: the next VM went down after the last came back)."""
    # (t, -1) sorts before (t, 1): an end before a start at the same moment
    points = sorted(
        [(i.start, 1) for i in intervals] + [(i.end, -1) for i in intervals if i.closed]
    )
    now = best = 0
    when = None
    for t, step in points:
        now += step
        if now > best:
            best, when = now, t
    return best, when


def group_violations(intervals: list[Interval], groups: dict[str, list[str]]) -> list[str]:
    """Two members of a redundancy group down at the same moment."""
    by_vm: dict[str, list[Interval]] = defaultdict(list)
    for i in intervals:
        by_vm[i.vm].append(i)
    found = []
    for group, members in groups.items():
        ivs = [i for m in members for i in by_vm.get(m, [])]
        count, when = max_overlap(ivs)
        if count > 1:
            found.append(f"group {group} ({', '.join(members)}): {count} down at t={when}")
    return found


def per_host(intervals: list[Interval]) -> dict[str, int]:
    hosts = sorted({i.pve for i in intervals})
    return {h: max_overlap([i for i in intervals if i.pve == h])[0] for h in hosts}


def handover_gaps(intervals: list[Interval]) -> list[float]:
    """With the budget full all along (K=1): the time from one VM serving again to the next
    shutdown received, i.e. what the tool spends around each restart besides the VM's own."""
    closed = sorted((i for i in intervals if i.closed), key=lambda i: i.start)
    return [b.start - a.end for a, b in zip(closed, closed[1:], strict=False) if b.start >= a.end]


def summary(intervals: list[Interval], groups: dict[str, list[str]], budget: int) -> dict:
    closed = [i for i in intervals if i.closed]
    most, when = max_overlap(intervals)
    gaps = handover_gaps(intervals)
    return {
        "restarts_begun": len(intervals),
        "still_down_at_end": sorted(i.vm for i in intervals if not i.closed),
        "max_down": most,
        "max_down_first_at": when,
        "max_down_per_pve": per_host(intervals),
        "group_violations": group_violations(intervals, groups),
        "budget_broken": most > budget,
        "span_s": (max(i.end for i in closed) - min(i.start for i in intervals)) if closed else 0.0,
        "sum_down_measured_s": sum(i.end - i.start for i in closed),
        "handover_gap_median_s": statistics.median(gaps) if gaps else None,
        "handover_gap_p90_s": statistics.quantiles(gaps, n=10)[-1] if len(gaps) >= 10 else None,
    }
