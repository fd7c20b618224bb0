"""Liveness of a lab VM: the SSH banner probe on loopback, the watch and its session (no lab)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pvelab.fleet import liveness, roster
from pvelab.fleet.liveness import UP, LabProbe, SshWatch, session_argv, ssh_state
from pvelab.paths import LabPaths


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    """A one-connection TCP server on 127.0.0.1 that hands its connection to `handle`."""
    listeners: list[socket.socket] = []

    def serve(handle: Callable[[socket.socket], None]) -> int:
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        listeners.append(lsock)

        def accept() -> None:
            conn, _ = lsock.accept()
            with conn:
                handle(conn)

        threading.Thread(target=accept, daemon=True).start()
        return int(lsock.getsockname()[1])

    yield serve
    for lsock in listeners:
        lsock.close()


def _hold(conn: socket.socket) -> None:
    conn.recv(1)  # until the client gives up


def test_banner_means_up(server: Callable) -> None:
    port = server(lambda c: c.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n") or _hold(c))
    assert ssh_state(port) == UP


def test_banner_split_over_two_packets(server: Callable) -> None:
    def slow(c: socket.socket) -> None:
        c.sendall(b"SSH-2.0-Open")
        c.sendall(b"SSH_9.2\r\n")
        _hold(c)

    assert ssh_state(server(slow)) == UP


def test_closed_at_once_is_no_ssh(server: Callable) -> None:
    # QEMU's user-mode forward accepts, then closes when nothing listens in the guest.
    assert ssh_state(server(lambda c: None)) == "no-ssh"


def test_silence_is_no_banner(server: Callable) -> None:
    assert ssh_state(server(_hold), banner_timeout=0.1) == "no-banner"


def test_other_protocol_is_bad_banner(server: Callable) -> None:
    assert ssh_state(server(lambda c: c.sendall(b"HTTP/1.0 400\r\n") or _hold(c))) == "bad-banner"


def test_refused_is_no_ssh() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        assert ssh_state(port) == "no-ssh"


class FakeSession:
    def __init__(self) -> None:
        self.up = True
        self.closed = False

    def alive(self) -> bool:
        return self.up

    def close(self) -> None:
        self.closed = True


class Fakes:
    def __init__(self, banners: list[str]) -> None:
        self.banners = banners
        self.banner_calls: list[float] = []
        self.sessions: list[FakeSession] = []

    def banner(self, timeout: float) -> str:
        self.banner_calls.append(timeout)
        return self.banners.pop(0)

    def open_session(self) -> FakeSession:
        self.sessions.append(FakeSession())
        return self.sessions[-1]


def test_watch_reads_banners_until_up_then_rests_on_a_session() -> None:
    fakes = Fakes(["no-banner", "no-ssh", UP])
    watch = SshWatch(fakes.banner, fakes.open_session, retry_s=0)
    assert [watch.step() for _ in range(3)] == ["no-banner", "no-ssh", UP]
    assert len(fakes.sessions) == 1
    assert [watch.step() for _ in range(5)] == [UP] * 5
    assert len(fakes.banner_calls) == 3  # no banner (no sshd fork in the guest) while it lives


def test_watch_probes_again_when_the_session_ends() -> None:
    fakes = Fakes([UP, "no-banner", UP])
    watch = SshWatch(fakes.banner, fakes.open_session, retry_s=0)
    watch.step()
    fakes.sessions[0].up = False
    assert watch.step() == "no-banner"
    assert fakes.sessions[0].closed
    assert watch.step() == UP
    assert len(fakes.sessions) == 2


def test_watch_opens_sessions_at_most_every_retry_s() -> None:
    fakes = Fakes([UP] * 4)
    watch = SshWatch(fakes.banner, fakes.open_session, retry_s=3600)
    watch.step()
    fakes.sessions[0].up = False  # e.g. the login failed
    assert [watch.step() for _ in range(3)] == [UP] * 3  # the banner still says up
    assert len(fakes.sessions) == 1


def test_watch_starts_with_a_patient_probe_and_closes_its_session() -> None:
    fakes = Fakes([UP])
    watch = SshWatch(fakes.banner, fakes.open_session, interval=3600)
    watch.start()
    assert watch.state == UP
    assert fakes.banner_calls == [liveness.FIRST_BANNER_TIMEOUT]
    watch.close()
    assert fakes.sessions[0].closed


def test_session_argv_pins_keys_and_keeps_alive(tmp_path: Path) -> None:
    argv = session_argv(LabPaths(tmp_path), 22101)
    assert argv[:5] == ["ssh", "-F", "/dev/null", "-T", "-N"]
    assert "ServerAliveInterval=1" in argv and "ServerAliveCountMax=3" in argv
    assert "StrictHostKeyChecking=yes" in argv
    assert argv[-3:] == ["-p", "22101", "root@127.0.0.1"]


def test_lab_probe_says_stopped_without_a_running_qemu(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        base = s.getsockname()[1] - 101  # pbs's port: refused
        probe = LabProbe(LabPaths(tmp_path), base, roster.select("pbs"), interval=3600)
        try:
            assert probe() == {"pbs": "stopped"}
            assert probe.watches["pbs"].state == "no-ssh"
        finally:
            probe.close()
