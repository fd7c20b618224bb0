"""Parsers of `qm` output: pure functions over captured text, tested with real PVE strings."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

AGENT_PORT = "/dev/virtio-ports/org.qemu.guest_agent.0"


def parse_qm_status(text: str) -> str:
    """`status: running` -> 'running'. Raise ValueError on anything else."""
    match = re.fullmatch(r"status: (\S+)\s*", text)
    if not match:
        raise ValueError(f"unexpected 'qm status' output: {text.strip()[:200]!r}")
    return match.group(1)


def parse_key_values(text: str) -> dict[str, str]:
    """`key: value` lines (qm config, qm status --verbose top level); nested lines are skipped."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith(("\t", " ")):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"unexpected line in qm output: {line[:200]!r}")
        result[key.strip()] = value.strip()
    return result


def parse_agent_option(value: str | None) -> dict[str, str]:
    """PVE's `agent` property string: '1', 'enabled=1,type=virtio', '1,freeze-fs=1'."""
    result: dict[str, str] = {"enabled": "0"}
    if not value:
        return result
    for i, part in enumerate(value.split(",")):
        key, sep, val = part.partition("=")
        if not sep:
            if i != 0:
                raise ValueError(f"bad agent option {value!r}")
            result["enabled"] = key.strip()
        else:
            result[key.strip()] = val.strip()
    return result


def agent_enabled(config: dict[str, str]) -> bool:
    return parse_agent_option(config.get("agent")).get("enabled") in {"1", "true", "yes", "on"}


def net_macs(config: dict[str, str]) -> set[str]:
    """MAC addresses of the VM's NICs (`net0: virtio=BC:24:11:..,bridge=vmbr0`)."""
    macs = set()
    for key, value in config.items():
        if re.fullmatch(r"net\d+", key):
            match = re.search(r"=([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})", value)
            if match:
                macs.add(match.group(1).lower())
    return macs


def parse_agent_output(text: str) -> Any:
    """Output of `qm guest cmd`: empty for {}, a bare scalar, or Perl-pretty JSON."""
    stripped = text.strip()
    if not stripped:
        return {}
    if stripped[0] in "{[":
        data = json.loads(stripped)
        if isinstance(data, dict) and set(data) == {"error"}:
            raise ValueError(f"guest agent error: {data['error']}")
        return data
    return stripped


@dataclass(frozen=True)
class RunStatus:
    """`qm status --verbose`: what the hypervisor says about the VM's QEMU process."""

    status: str
    pid: int | None
    uptime: int | None
    lock: str | None

    @classmethod
    def parse(cls, text: str) -> RunStatus:
        kv = parse_key_values(text)
        if "status" not in kv:
            raise ValueError(f"no 'status' in 'qm status --verbose' output: {text.strip()[:200]!r}")

        def number(key: str) -> int | None:
            return int(kv[key]) if kv.get(key, "").isdigit() else None

        return cls(
            kv.get("qmpstatus") or kv["status"], number("pid"), number("uptime"), kv.get("lock")
        )


@dataclass(frozen=True)
class SnapshotEntry:
    """One line of `qm listsnapshot`: the name, its time as the host prints it (local time,
    `%F %H:%M:%S`), the first line of its description, and its depth in the tree."""

    name: str
    time: str | None
    description: str
    depth: int


# print_snapshot_tree (pve-guest-common GuestHelpers.pm): `printf("%s %-${len}s %-23s %s\n",
# $prefix, $name, $timestring, $description)`, prefix "`->" indented one space per level.
_SNAPSHOT_LINE = re.compile(
    r"(?P<indent> *)`-> (?P<name>\S+)\s*?"
    r"(?:\s+(?P<time>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}))?(?:\s+(?P<desc>.*?))?\s*"
)


def parse_listsnapshot(text: str) -> list[SnapshotEntry]:
    """`qm listsnapshot <vmid>`: every snapshot, tree order, without the `current` line.
    Raise ValueError on a line that is not part of PVE's tree."""
    entries = []
    for line in text.split("\n"):  # PVE cuts a description at "\n" only (not at \r, \x0b, ...)
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        match = _SNAPSHOT_LINE.fullmatch(line)
        if not match:
            raise ValueError(f"unexpected line in qm listsnapshot output: {line[:200]!r}")
        if match["name"] == "current" and match["time"] is None:
            continue  # `current ... You are here!`: where the VM is, not a snapshot
        entries.append(
            SnapshotEntry(match["name"], match["time"], match["desc"] or "", len(match["indent"]))
        )
    return entries
