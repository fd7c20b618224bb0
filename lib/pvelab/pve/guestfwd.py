"""Per-connection relay for QEMU `guestfwd=...-cmd:` (run by path, stdlib only, no output).

QEMU's `guestfwd=tcp:A:P-tcp:HOST:PORT` opens ONE host connection when QEMU starts (and fails
the start if nobody listens); after that connection closes, later guest connections get
nothing. With `-cmd:` slirp spawns this program for every guest connection, with the guest's
socket on fds 0/1/2, so each apt request gets its own connection to the repo server.
Nothing may be written to stderr: it is the guest's socket too.
"""

from __future__ import annotations

import selectors
import socket
import sys


def relay(guest: socket.socket, host: socket.socket) -> None:
    """Copy both ways until both directions reached EOF."""
    sel = selectors.DefaultSelector()
    peers = {guest: host, host: guest}
    for sock in peers:
        sel.register(sock, selectors.EVENT_READ)
    open_reads = 2
    while open_reads:
        for key, _ in sel.select():
            src = key.fileobj
            assert isinstance(src, socket.socket)
            data = src.recv(65536)
            if data:
                peers[src].sendall(data)
                continue
            sel.unregister(src)
            open_reads -= 1
            try:
                peers[src].shutdown(socket.SHUT_WR)
            except OSError:
                pass


def main(argv: list[str]) -> int:
    host, port = argv[1], int(argv[2])
    try:
        guest = socket.socket(fileno=0)
        upstream = socket.create_connection((host, port), timeout=10)
        upstream.settimeout(None)
        relay(guest, upstream)
    except OSError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
