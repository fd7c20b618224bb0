"""Waiting for booting guests: agent ping, then the SSH banner, then a login with the pinned key."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pvelab.fleet.roster import VM
from pvelab.paths import LabPaths
from pvelab.pve.qmp import MonitorError, QGAClient
from pvelab.sshcmd import CommandResult, LabError

Log = Callable[[str], None]
# Probing too often slows a TCG boot (each stale SYN later forks an sshd on the one vCPU).
POLL_SECONDS = 3.0
PROGRESS_SECONDS = 10.0


@dataclass
class BootState:
    vm: VM
    started: float  # monotonic time `qm start` returned
    need_agent: bool
    agent_at: float | None = None
    ssh_at: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def phase(self) -> str:
        if self.need_agent and self.agent_at is None:
            return "agent"
        return "SSH" if self.ssh_at is None else "up"

    def seconds(self, at: float | None) -> float | None:
        return None if at is None else round(at - self.started, 1)


def poll(check: Callable[[], bool], timeout: float, interval: float = 2.0) -> bool:
    """Call `check` until it returns True or `timeout` s pass; returns the last verdict."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def agent_ping(paths: LabPaths, vmid: int, timeout: float = 2.0) -> bool:
    try:
        QGAClient(paths.qga_socket(vmid), vmid).command("guest-ping", timeout=timeout)
    except MonitorError:
        return False
    return True


def ssh_banner(port: int, timeout: float = 3.0) -> bool:
    """True once sshd itself answers: user-mode hostfwd accepts TCP long before that."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def wait_all(
    states: list[BootState],
    *,
    port_of: Callable[[VM], int],
    login: Callable[[VM], CommandResult],
    qemu_alive: Callable[[VM], bool],
    paths: LabPaths,
    timeout: float,
    log: Log,
) -> None:
    """Poll every guest until agent (if configured) and SSH login answer; raise at the deadline."""
    deadline = time.monotonic() + timeout
    next_progress = time.monotonic() + PROGRESS_SECONDS
    while True:
        for st in (s for s in states if s.phase != "up"):
            _step(st, port_of, login, qemu_alive, paths, log)
        pending = [s for s in states if s.phase != "up"]
        now = time.monotonic()
        if not pending:
            return
        if now >= deadline:
            waiting = "; ".join(f"{s.vm.name} waiting for {s.phase} {s.problems}" for s in pending)
            raise LabError(f"guests not up after {timeout:.0f} s: {waiting}")
        if now >= next_progress:
            for s in pending:
                log(f"{s.vm.name}: waiting for {s.phase} ({now - s.started:.0f} s)")
            next_progress = now + PROGRESS_SECONDS
        time.sleep(POLL_SECONDS)


def _step(
    st: BootState,
    port_of: Callable[[VM], int],
    login: Callable[[VM], CommandResult],
    qemu_alive: Callable[[VM], bool],
    paths: LabPaths,
    log: Log,
) -> None:
    vm = st.vm
    if not qemu_alive(vm):
        raise LabError(f"{vm.name}: QEMU exited while booting; see {paths.serial_log(vm.vmid)}")
    if st.phase == "agent":
        if agent_ping(paths, vm.vmid):
            st.agent_at = time.monotonic()
            log(f"{vm.name}: guest agent answers ({st.seconds(st.agent_at)} s)")
        return
    if not ssh_banner(port_of(vm)):
        return
    result = login(vm)
    if result.ok and result.stdout.strip() == vm.name:
        st.ssh_at = time.monotonic()
        log(f"{vm.name}: SSH login with pinned host key ok ({st.seconds(st.ssh_at)} s)")
    elif result.rc != 255:  # 255: ssh itself failed (still booting); else a real mismatch
        raise LabError(f"{vm.name}: SSH answers but the guest is wrong:\n{result}")
    else:
        st.problems = result.stderr.strip().splitlines()[-1:]
