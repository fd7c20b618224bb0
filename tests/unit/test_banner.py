"""The banner probe (is sshd up yet?) against real sockets on 127.0.0.1, and Connections.banner."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from pvepatch.inventory import SSHSpec
from pvepatch.transport.banner import ssh_banner
from pvepatch.transport.command import ReadOnlyGuard
from pvepatch.transport.connections import Connections
from test_ssh import SSHD, keys  # noqa: F401 - the real SSH server and its keys fixture


class Listener:
    """A TCP server on 127.0.0.1 that sends `greeting` to each connection, then holds it open."""

    def __init__(self, greeting: bytes = b""):
        self.greeting = greeting
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.greeting:
                conn.sendall(self.greeting)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(5)
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def listener():
    made: list[Listener] = []

    def make(greeting: bytes = b"") -> Listener:
        made.append(Listener(greeting))
        return made[-1]

    yield make
    for server in made:
        server.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_sshd_is_seen(keys):  # noqa: F811 - the fixture imported above
    server = SSHD(keys[0], keys[1])
    try:
        assert ssh_banner("127.0.0.1", server.port, 2.0).startswith("SSH-2.0-paramiko")
    finally:
        server.close()


def test_lines_before_the_version_line_are_skipped(listener):
    server = listener(b"Welcome\r\nauthorized use only\r\nSSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    assert ssh_banner("127.0.0.1", server.port, 2.0) == "SSH-2.0-OpenSSH_9.2p1 Debian-2"


def test_a_server_that_accepts_and_says_nothing_is_not_up(listener):
    server = listener()
    started = time.monotonic()
    assert ssh_banner("127.0.0.1", server.port, 0.5) is None
    assert 0.4 < time.monotonic() - started < 1.5  # waited its timeout, not longer


def test_a_server_that_speaks_something_else_is_not_up(listener):
    assert ssh_banner("127.0.0.1", listener(b"HTTP/1.1 400 Bad Request\r\n\r\n").port, 0.5) is None


def test_a_closed_port_answers_at_once():
    started = time.monotonic()
    assert ssh_banner("127.0.0.1", _closed_port(), 2.0) is None
    assert time.monotonic() - started < 0.5


def _fail(*args):
    raise AssertionError(f"no connection was to be made: {args}")


def test_connections_without_a_probe_never_connect():
    """The fake fleet's addresses are documentation addresses: nothing may connect to them."""
    connections = Connections(_fail, ReadOnlyGuard())
    assert connections.banner("pbs", SSHSpec("192.0.2.10", 22, "root")) is True


def test_connections_ask_the_probe_for_the_host_address(listener):
    server = listener(b"SSH-2.0-OpenSSH_9.2p1\r\n")
    connections = Connections(_fail, ReadOnlyGuard(), banner=ssh_banner)
    assert connections.banner("vm", SSHSpec("127.0.0.1", server.port, "root")) is True
    assert connections.banner("vm", SSHSpec("127.0.0.1", _closed_port(), "root")) is False
