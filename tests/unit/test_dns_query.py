"""The Pi-hole DNS query: every way a server fails to answer is a TransportError (never a bare
exception that escapes a wait), tested against real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import threading

import pytest
from pvepatch.errors import TransportError
from pvepatch.guest import dns


def test_a_tcp_server_that_closes_at_once_is_no_answer():
    """What the lab's forwarded DNS port does while dnsmasq is down: accept, then close."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def accept_and_close():
        conn, _ = server.accept()
        conn.close()

    thread = threading.Thread(target=accept_and_close, daemon=True)
    thread.start()
    try:
        with pytest.raises(TransportError, match="got no answer"):
            dns.query("127.0.0.1", port, "pi.hole", "tcp", timeout=2.0)
    finally:
        thread.join(timeout=2)
        server.close()


def test_a_closed_tcp_port_is_no_answer():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with pytest.raises(TransportError, match="got no answer"):
        dns.query("127.0.0.1", port, "pi.hole", "tcp", timeout=2.0)
