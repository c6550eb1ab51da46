"""A real DNS server on loopback, serving a zone the test changes as it runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import DNSError, DNSLogger, DNSServer

from support.network import free_port

# -- a real DNS server on loopback -------------------------------------------------------------


@dataclass
class Zone:
    """What the test DNS server answers; change it while the test runs."""

    name: str = "callbacksallow.routee.test."
    a: list[str] = field(default_factory=list)
    aaaa: list[str] = field(default_factory=list)
    ttl: int = 1
    mode: str = "ok"  # ok | servfail | nxdomain | silent
    queries: int = 0

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        """Answer one query according to the zone's current state."""
        self.queries += 1
        if self.mode == "silent":
            raise DNSError("silent on purpose")
        reply = request.reply()
        if self.mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if self.mode == "nxdomain" or str(request.q.qname) != self.name:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if request.q.qtype == QTYPE.A:
            for address in self.a:
                reply.add_answer(RR(self.name, QTYPE.A, rdata=A(address), ttl=self.ttl))
        elif request.q.qtype == QTYPE.AAAA:
            for address in self.aaaa:
                reply.add_answer(RR(self.name, QTYPE.AAAA, rdata=AAAA(address), ttl=self.ttl))
        return reply


class _QuietLogger(DNSLogger):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(log="-recv,-send,-request,-reply,-truncated,-error,-data", logf=lambda _: None)


@contextlib.contextmanager
def dns_server(zone: Zone) -> Iterator[int]:
    """Serve ``zone`` on 127.0.0.1 over UDP and TCP on one free port; yield the port."""
    for _ in range(20):
        port = free_port()
        try:
            servers = [
                DNSServer(zone, address="127.0.0.1", port=port, logger=_QuietLogger()),
                DNSServer(zone, address="127.0.0.1", port=port, tcp=True, logger=_QuietLogger()),
            ]
            break
        except OSError:
            continue
    else:
        raise RuntimeError("no free port for the DNS server")
    for server in servers:
        server.start_thread()
    try:
        yield port
    finally:
        for server in servers:
            server.stop()
            server.server.server_close()


# -- the real service process ------------------------------------------------------------------


# -- certificates, made with the repository's own script ---------------------------------------
