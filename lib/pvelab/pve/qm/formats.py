"""`qm` output formats: Perl JSON pretty printing, `qm list` printf, `status --verbose`, the
snapshot tree."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from time import localtime, strftime
from typing import Any

INDENT = "   "  # JSON::XS pretty: 3 spaces


def perl_number(value: float | int) -> str:
    """How Perl stringifies a number (`2048`, `0.5`, `1e+20`): %.15g."""
    if isinstance(value, bool):
        return "1" if value else ""
    if isinstance(value, int):
        return str(value)
    return f"{value:.15g}"


def perl_json(value: Any, level: int = 0) -> str:
    """`to_json($v, {pretty => 1, canonical => 1})` without the trailing newline."""
    pad, inner = INDENT * level, INDENT * (level + 1)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = [
            f"{inner}{json.dumps(str(k), ensure_ascii=False)} : {perl_json(value[k], level + 1)}"
            for k in sorted(value, key=str)
        ]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        items = [f"{inner}{perl_json(v, level + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return perl_scalar(value)


def perl_scalar(value: Any) -> str:
    """A JSON leaf as PVE's Perl JSON prints it: null, true/false, a number, else a string."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return perl_number(value)
    return json.dumps(str(value), ensure_ascii=False)


def agent_result(result: Any) -> str:
    """PVE's $print_agent_result: nothing for undef/{}/blank, bare scalars, else pretty JSON."""
    if result is None:
        return ""
    if isinstance(result, Mapping | list | tuple):
        if isinstance(result, Mapping) and not result:
            return ""
        return perl_json(result) + "\n"
    text = perl_json(result) if isinstance(result, bool | int | float) else str(result)
    text = text.rstrip("\n")
    return "" if not text.strip() else text + "\n"


def booleans_to_ints(value: Any) -> Any:
    """exec-status output: JSON booleans become 1/0 (PVE decodes then re-encodes)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Mapping):
        return {k: booleans_to_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [booleans_to_ints(v) for v in value]
    return value


@dataclass(frozen=True)
class ListRow:
    """One `qm list` row."""

    vmid: int
    name: str
    status: str
    maxmem: int
    maxdisk: int
    pid: int


def _perl_s(value: Any) -> str:
    return perl_number(value) if isinstance(value, int | float) else str(value)


def qm_list(rows: Iterable[ListRow]) -> str:
    """`qm list`: header + printf rows sorted by vmid; nothing at all without VMs."""
    rows = sorted(rows, key=lambda r: r.vmid)
    if not rows:
        return ""
    fmt = "{:>10} {:<20} {:<10} {:<10} {:>12} {:<10}\n"
    out = fmt.format("VMID", "NAME", "STATUS", "MEM(MB)", "BOOTDISK(GB)", "PID")
    for r in rows:
        mem = r.maxmem / (1024 * 1024)
        mem_text = perl_number(int(mem) if mem.is_integer() else mem)
        disk = f"{r.maxdisk / 1024**3:.2f}"
        out += fmt.format(r.vmid, r.name, r.status, mem_text, disk, r.pid or 0)
    return out


def recursive_hash(key: str, value: Any, prefix: str = "") -> str:
    """PVE's print_recursive_hash as used by `qm status --verbose`."""
    if isinstance(value, Mapping):
        out = f"{prefix}{key}:\n"
        for k in sorted(value):
            out += recursive_hash(k, value[k], "\t" + prefix)
        return out
    if isinstance(value, list):
        out = f"{prefix}{key}:\n"
        for item in value:
            out += recursive_hash("", item, "\t" + prefix)
        return out
    return f"{prefix}{key}: {_perl_s(value)}\n"


def status_verbose(stat: Mapping[str, Any]) -> str:
    """Sorted `key: value` lines, `cpu`/`relcpu` left out like PVE."""
    return "".join(recursive_hash(k, stat[k]) for k in sorted(stat) if k not in ("cpu", "relcpu"))


@dataclass(frozen=True)
class SnapshotItem:
    """One item of PVE's snapshot list (API `snapshot_list`); `current` has no snaptime."""

    name: str
    snaptime: int | None
    description: str
    parent: str | None = None


def snapshot_tree(items: Iterable[SnapshotItem]) -> str:
    """GuestHelpers.pm print_snapshot_tree: children under their parent, by snaptime."""
    by_name = {i.name: i for i in items}
    children: dict[str, list[str]] = {}
    roots = []
    for item in by_name.values():
        if item.parent and item.parent in by_name:
            children.setdefault(item.parent, []).append(item.name)
        else:
            roots.append(item.name)

    def order(names: list[str]) -> list[str]:  # no snaptime (`current`) sorts last
        return sorted(names, key=lambda n: (by_name[n].snaptime is None, by_name[n].snaptime or 0))

    def lines(prefix: str, name: str) -> str:
        item = by_name[name]
        text = item.description if item.description not in ("", "0") else "no-description"
        description = text.split("\n")[0]
        when = "" if item.snaptime is None else strftime("%F %H:%M:%S", localtime(item.snaptime))
        width = max(0, 30 - len(prefix))
        out = f"{prefix} {name:<{width}} {when:<23} {description}\n"
        return out + "".join(lines(f" {prefix}", c) for c in order(children.get(name, [])))

    return "".join(lines("`->", root) for root in order(roots))
