"""DNS checks of a Pi-hole, sent from the machine running pytest (dnspython)."""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from pvepatch.errors import TransportError

BLOCKED_ADDRESSES = {"0.0.0.0", "::"}


@dataclass(frozen=True)
class Answer:
    name: str
    rcode: str
    addresses: tuple[str, ...]

    @property
    def resolved(self) -> bool:
        return self.rcode == "NOERROR" and bool(self.addresses) and not self.blocked

    @property
    def blocked(self) -> bool:
        """Pi-hole's default blocking modes: 0.0.0.0 / :: (NULL), NXDOMAIN, or no answer."""
        if self.rcode == "NXDOMAIN":
            return True
        return self.rcode == "NOERROR" and (
            not self.addresses or set(self.addresses) <= BLOCKED_ADDRESSES
        )

    def __str__(self) -> str:
        return f"{self.name}: {self.rcode} {', '.join(self.addresses) or '(no address)'}"


def query(server: str, port: int, name: str, protocol: str = "udp", timeout: float = 5.0) -> Answer:
    """Ask `server`:`port` for the A record of `name` (UDP with TCP on truncation, or TCP)."""
    request = dns.message.make_query(name, dns.rdatatype.A)
    try:
        if protocol == "tcp":
            response = dns.query.tcp(request, server, timeout=timeout, port=port)
        else:
            response, _ = dns.query.udp_with_fallback(request, server, timeout=timeout, port=port)
    except (dns.exception.DNSException, OSError, EOFError) as exc:
        # EOFError: a TCP server that accepts and closes at once (a forwarded port whose DNS
        # service is down): dnspython raises it bare
        raise TransportError(
            f"{server}:{port}", f"DNS query for {name} got no answer: {exc}"
        ) from exc
    addresses = tuple(
        item.address
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.A
        for item in rrset
    )
    return Answer(name, dns.rcode.to_text(response.rcode()), addresses)
