"""The HA daemons' log (`log/ha.log`), in journalctl's short format as PVE's syslog lines read:
`Jun 08 10:04:55 pve pve-ha-crm[1234]: got crm command: stop vm:100 60`."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pvelab.paths import LabPaths

Log = Callable[[str], None]


def log_path(paths: LabPaths) -> Path:
    return paths.log_dir / "ha.log"


class Journal:
    """Appends whole lines (one O_APPEND write each), safe from every thread of the daemon."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, node: str, ident: str, msg: str, pid: int | None = None) -> None:
        pid = pid if pid is not None else threading.get_native_id()
        stamp = time.strftime("%b %d %H:%M:%S")
        line = f"{stamp} {node} {ident}[{pid}]: {msg.rstrip()}\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def logger(self, node: str, ident: str) -> Log:
        """A `$haenv->log` for one daemon on one node; the pid is the calling thread's."""
        return lambda msg: self.write(node, ident, msg)
