"""Is a VM's QEMU running? PVE's pidfile + /proc check, uptime, and runtime-file cleanup."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from pvelab.paths import LabPaths

_QEMU_ARGV0 = re.compile(r"(?:kvm$|(?:^|/)qemu-[^/]+$)")


def read_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def running_pid(paths: LabPaths, vmid: int) -> int | None:
    """PID of the VM's QEMU, or None (QS9 Helpers.pm `vm_running_locally`)."""
    pidfile = paths.pidfile(vmid)
    try:
        first = pidfile.read_text().split("\n", 1)[0]
    except OSError:
        return None
    if not re.fullmatch(r"\d+", first):
        return None
    pid = int(first)
    argv = read_cmdline(pid)
    if not argv or not _QEMU_ARGV0.search(argv[0]):
        return None
    pairs = zip(argv, argv[1:], strict=False)
    if ("-pidfile", str(pidfile)) not in pairs:
        return None
    return None if _is_zombie(pid) else pid


def uptime(pid: int) -> int:
    """Seconds since the process started (PVE: from /proc/<pid>/stat starttime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot_uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0
    start = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return max(0, int(boot_uptime - start))


def mem_share(pid: int, maxmem: int) -> int:
    """vmstatus's `mem` of a running VM: rss / vsize * maxmem (ProcFSTools read_proc_pid_stat:
    rss in 4096-byte pages); 0 when /proc has no answer."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        vsize, rss = int(fields[20]), int(fields[21]) * 4096
    except (OSError, IndexError, ValueError):
        return 0
    return int(rss / vsize * maxmem) if vsize else 0


def wait_stopped(paths: LabPaths, vmid: int, timeout: float, poll: float = 0.2) -> bool:
    """Poll until the VM is not running; True if it stopped within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while running_pid(paths, vmid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


def cleanup(paths: LabPaths, vmid: int) -> None:
    """vm_stop_cleanup: drop the runtime files a killed QEMU leaves behind."""
    for path in (paths.pidfile(vmid), paths.qmp_socket(vmid), paths.qga_socket(vmid)):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
