"""Resolve a host name to an address with a short bound (a stuck resolver must not hang a run)."""

from __future__ import annotations

import ipaddress
import socket
import threading

RESOLVE_TIMEOUT = 3.0


def resolve_address(name: str, timeout: float = RESOLVE_TIMEOUT) -> str:
    """`name` if it is an IP address, else its first address; raise LookupError saying why."""
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    found: dict[str, str] = {}

    def lookup() -> None:
        try:
            found["address"] = str(socket.getaddrinfo(name, None, type=socket.SOCK_DGRAM)[0][4][0])
        except (OSError, UnicodeError, IndexError) as exc:
            found["error"] = str(exc) or type(exc).__name__

    worker = threading.Thread(target=lookup, name=f"resolve {name}", daemon=True)
    worker.start()
    worker.join(timeout)
    if "address" in found:
        return found["address"]
    raise LookupError(found.get("error", f"no answer within {timeout:g} s"))
