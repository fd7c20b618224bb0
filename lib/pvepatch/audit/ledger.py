"""The run's ledger: JSON lines, one record per event, flushed and fsynced as the run goes."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def iso(ts: float | None) -> str | None:
    """Epoch seconds as local ISO 8601 with the UTC offset (what an auditor reads)."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="milliseconds")


class Ledger:
    """Appends records to `path`; each line is complete and on disk before the run goes on,
    so a run killed half-way leaves every record written up to then."""

    def __init__(self, path: Path, run_id: str, redact: Callable[[Any], Any] = lambda value: value):
        self.path = path
        self.run_id = run_id
        self.redact = redact
        self.seq = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)

    def write(self, kind: str, **fields: Any) -> dict[str, Any]:
        now = time.time()
        self.seq += 1
        record = {
            "type": kind,
            "run_id": self.run_id,
            "seq": self.seq,
            "time": iso(now),
            "ts": round(now, 3),
            **self.redact(fields),
        }
        line = json.dumps(record, sort_keys=False, default=str) + "\n"
        os.write(self._fd, line.encode("utf-8"))
        os.fsync(self._fd)
        return record

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read(path: Path) -> list[dict[str, Any]]:
    """The records of a ledger; a torn last line (killed mid-write) is ignored."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def verdict(records: list[dict[str, Any]]) -> str:
    """A run's verdict from its ledger: passed, failed, interrupted, or incomplete (no end)."""
    end = next((r for r in reversed(records) if r.get("type") == "run_end"), None)
    if end is None:
        return "incomplete (no run end: killed?)"
    return str(end.get("verdict", "unknown"))


def read_line(line: str) -> dict[str, Any]:
    """One ledger line; raises ValueError when it is not a complete record."""
    record = json.loads(line)
    if not isinstance(record, dict) or "type" not in record or "seq" not in record:
        raise ValueError(f"not a ledger record: {line[:80]!r}")
    return record
