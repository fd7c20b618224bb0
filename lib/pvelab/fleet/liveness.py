"""Is a lab VM up: its QEMU runs and its sshd answers, seen cheaply enough to ask twice a second.

QEMU's state is read in the round (the stand-in's pidfile + /proc check). The sshd's is kept
current by an `SshWatch` per VM, in a thread of its own: an `SSH-` banner on the VM's forwarded
port on 127.0.0.1 while the VM is not known up, then one logged-in `ssh -N` session with
keepalives. The states: `up`, `stopped` (no QEMU), `no-ssh` (refused or closed: QEMU's user-mode
forward accepts TCP even while nothing listens in the guest, then closes), `no-banner` (nothing
within the timeout: the guest's network is down, early in a shutdown or late in a boot),
`bad-banner`.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Protocol

from pvelab.fleet import roster
from pvelab.paths import LabPaths
from pvelab.pve import vmstate
from pvelab.sshcmd import ssh_argv

if TYPE_CHECKING:
    from pvelab.fleet.lab import Lab

UP = "up"
VMs = Sequence[str] | str | None  # as roster.select takes them
# Banners are read in each VM's own thread, never in the round, so a slow guest delays no
# sample. A banner takes 0.1-0.6 s under TCG; the timeout bounds how late a VM coming back is
# seen, except at the start, where a busy guest must not look down.
CONNECT_TIMEOUT = 0.5
BANNER_TIMEOUT = 1.0
FIRST_BANNER_TIMEOUT = 3.0


def ssh_state(
    port: int, banner_timeout: float = BANNER_TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT
) -> str:
    """UP when sshd on 127.0.0.1:`port` sends an `SSH-` line, else why not."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=connect_timeout)
    except OSError:
        return "no-ssh"
    with sock:
        deadline = time.monotonic() + banner_timeout
        data = b""
        try:
            while b"\n" not in data and len(data) < 256:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "no-banner"
                sock.settimeout(remaining)
                chunk = sock.recv(256)
                if not chunk:
                    return "no-ssh"
                data += chunk
        except TimeoutError:
            return "no-banner"
        except OSError:
            return "no-ssh"
    # RFC 4253 allows other lines before the version line; sshd sends none.
    return UP if data.startswith(b"SSH-") else "bad-banner"


class Session(Protocol):
    def alive(self) -> bool: ...
    def close(self) -> None: ...


class SshSession:
    """`ssh -N` logged in to a guest, kept alive by SSH keepalives: ends when the guest stops
    answering (its network goes down early in a shutdown) or its connection closes."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def session_argv(paths: LabPaths, port: int) -> list[str]:
    """The lab's pinned-key ssh, no command, keepalive every 1 s, gone after 3 unanswered."""
    argv = ssh_argv(paths, port)
    at = argv.index("-T") + 1
    argv[at:at] = ["-N", "-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=3"]
    return argv


class SshWatch:
    """Whether one guest's sshd answers, kept current by a thread of its own.

    A new connection costs the guest an sshd fork and exec (about 0.17 s of a host core under
    TCG: probing five VMs twice a second took 1.65 of the machine's 2 cores), so a banner is
    read only while the VM is not known up; once it answers, one logged-in `ssh -N` session
    with keepalives says it stays up, for free, until it ends. A session that ends is followed
    by banner probes every `interval`; a new session is opened at most every `retry_s`.
    """

    def __init__(
        self,
        banner: Callable[[float], str],  # a timeout -> UP or why not
        open_session: Callable[[], Session],
        interval: float = 0.5,
        retry_s: float = 10.0,
    ) -> None:
        self.banner = banner
        self.open_session = open_session
        self.interval = interval
        self.retry_s = retry_s
        self.session: Session | None = None
        self.state = "unknown"
        self._next_session = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self, banner_timeout: float = BANNER_TIMEOUT) -> str:
        """One check: UP while the session lives, else the banner probe's verdict."""
        if self.session is not None:
            if self.session.alive():
                self.state = UP
                return self.state
            self.session.close()
            self.session = None
        state = self.banner(banner_timeout)
        now = time.monotonic()
        if state == UP and now >= self._next_session:
            self._next_session = now + self.retry_s
            self.session = self.open_session()
        self.state = state
        return state

    def start(self) -> None:
        self.step(FIRST_BANNER_TIMEOUT)  # the first sample already knows
        self._thread = threading.Thread(target=self._run, name="pvelab-sshwatch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.step()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.session is not None:
            self.session.close()
            self.session = None


class LabProbe:
    """One round over the given lab VMs: QEMU's state now, each sshd's state as last seen."""

    def __init__(
        self, paths: LabPaths, base: int, vms: Iterable[roster.VM], interval: float = 0.5
    ) -> None:
        self.paths = paths
        self.vms = list(vms)
        self.watches = {
            vm.name: SshWatch(
                partial(ssh_state, vm.ssh_port(base)),
                partial(SshSession, session_argv(paths, vm.ssh_port(base))),
                interval,
            )
            for vm in self.vms
        }
        with ThreadPoolExecutor(max_workers=max(1, len(self.vms))) as pool:
            list(pool.map(SshWatch.start, self.watches.values()))

    @classmethod
    def of(cls, lab: Lab, vms: VMs = None, interval: float = 0.5) -> LabProbe:
        return cls(lab.paths, lab.base, roster.select(vms), interval)

    def __call__(self) -> dict[str, str]:
        return {
            vm.name: "stopped"
            if vmstate.running_pid(self.paths, vm.vmid) is None
            else self.watches[vm.name].state
            for vm in self.vms
        }

    def close(self) -> None:
        for watch in self.watches.values():
            watch.close()
