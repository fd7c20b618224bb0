"""Is sshd up yet? The SSH identification line, read without authenticating (no paramiko)."""

from __future__ import annotations

import socket
import time

BANNER_LINES = 20  # RFC 4253 4.2: the server may send other lines before its version line


def ssh_banner(address: str, port: int, timeout: float = 1.0) -> str | None:
    """The identification line (`SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3`) the server at
    address:port sends on connect, or None when nothing listens, nothing is said within
    `timeout`, or what is said is not SSH. No authentication and no host key: it only says
    that an sshd accepts connections, so the verified SSH connection is worth opening now."""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            reader = sock.makefile("rb")
            for _ in range(BANNER_LINES):
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                line = reader.readline(256)
                if not line:
                    return None
                if line.startswith(b"SSH-"):
                    return line.decode("ascii", errors="replace").strip()
    except OSError:  # refused, unreachable, timed out, reset
        return None
    return None
