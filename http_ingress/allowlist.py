"""Who may post callbacks: the client address, static networks and the DNS allowlist.

The DNS allowlist is resolved in the background, never on the request path. An
answer is used until its TTL runs out, clamped to [min_ttl, max_ttl]. When a
lookup fails (timeout, SERVFAIL, NXDOMAIN, no records) the last good answer is
kept for up to ``max_stale`` seconds after it was obtained, and lookups are
retried with exponential backoff. Before the first answer, or once the last one
is too old, the allowlist is *unavailable*: callbacks get 503 (Routee retries)
rather than an open door.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from service.config.values import HostPort, IPNetwork
from service.domain.errors import AllowlistUnavailableError, RouteeCallbacksError, SourceNotAllowedError

_LOGGER = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=4096)  # The same few peers post again and again.
def parse_address(text: str) -> IPAddress:
    """Parse an IP address, the IPv4-mapped IPv6 form (``::ffff:a.b.c.d``) as the IPv4 address it maps."""
    address = ipaddress.ip_address(text.strip().removeprefix("[").removesuffix("]").split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


#: How many (peer, X-Forwarded-For) pairs an Allowlist remembers the client of before it starts over.
_REMEMBERED_CLIENTS = 4096


class _Client(NamedTuple):
    """The client a request came from: its address, as text, and whether an allowed network lists it."""

    address: IPAddress
    text: str
    listed: bool


def _within(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == network.version and address in network for network in networks)


def client_address(peer: str, forwarded_for: str | None, trusted_proxies: Iterable[IPNetwork]) -> IPAddress:
    """Return the address of the client that sent the request.

    That is the peer, unless the peer is a trusted proxy and sent
    ``X-Forwarded-For``: then it is the right-most entry that is not itself a
    trusted proxy. Left-most entries are never believed (any client can write
    them). A malformed header from a trusted proxy raises SourceNotAllowedError.
    """
    try:
        address = parse_address(peer)
    except ValueError:
        raise SourceNotAllowedError(f"the peer address {peer!r} is not an IP address") from None
    trusted = tuple(trusted_proxies)
    if forwarded_for is None or not _within(address, trusted):
        return address
    for entry in reversed(forwarded_for.split(",")):
        try:
            address = parse_address(entry)
        except ValueError:
            raise SourceNotAllowedError("X-Forwarded-For from a trusted proxy is malformed") from None
        if not _within(address, trusted):
            return address
    return address


class LookupFailedError(RouteeCallbacksError):
    """A DNS lookup of the allowlist name failed."""


@dataclass(frozen=True)
class Resolution:
    """One DNS answer: the addresses and how long they may be used."""

    addresses: frozenset[IPAddress]
    ttl: float


class Resolver(Protocol):
    """Looks up the A and AAAA records of a name."""

    async def resolve(self, name: str) -> Resolution:
        """Return the addresses of a name; raise LookupFailedError when there are none or the lookup fails."""


class DnspythonResolver:
    """Resolver on dnspython's asyncio resolver, through a given server or the system's."""

    def __init__(self, server: HostPort | None = None, *, timeout: float = 2.0) -> None:
        if server is None:
            self._resolver = dns.asyncresolver.Resolver()
        else:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [server.host]
            self._resolver.port = server.port
        self._resolver.lifetime = timeout

    async def resolve(self, name: str) -> Resolution:
        """Look up A and AAAA together; one type without records is fine, both without is a failure."""
        answers = await asyncio.gather(
            *(self._resolver.resolve(name, rdtype) for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)),
            return_exceptions=True,
        )
        addresses: set[IPAddress] = set()
        ttls: list[float] = []
        for answer in answers:
            if isinstance(answer, dns.resolver.NoAnswer):
                continue
            if isinstance(answer, dns.resolver.NXDOMAIN):
                raise LookupFailedError(f"{name}: NXDOMAIN")
            if isinstance(answer, dns.exception.Timeout):
                raise LookupFailedError(f"{name}: timed out")
            if isinstance(answer, dns.resolver.NoNameservers):
                raise LookupFailedError(f"{name}: no server answered (SERVFAIL or refused)")
            if isinstance(answer, BaseException):
                raise LookupFailedError(f"{name}: {answer.__class__.__name__}: {answer}")
            addresses.update(parse_address(record.address) for record in answer)
            ttls.append(answer.rrset.ttl if answer.rrset is not None else 0)
        if not addresses:
            raise LookupFailedError(f"{name}: no A or AAAA records")
        return Resolution(frozenset(addresses), min(ttls))


class DnsAllowlist:
    """The addresses a DNS name resolves to, refreshed in the background."""

    def __init__(
        self,
        host: str,
        resolver: Resolver,
        *,
        min_ttl: float = 5.0,
        max_ttl: float = 300.0,
        max_stale: float = 24 * 3600.0,
        backoff: tuple[float, float] = (1.0, 60.0),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.host = host
        self._resolver = resolver
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self.max_stale = max_stale
        self._backoff = backoff
        self._clock = clock
        self._sleep = sleep
        self._addresses: frozenset[IPAddress] | None = None
        self._resolved_at: float | None = None
        self._failures = 0
        self.last_error: str | None = None

    def addresses(self) -> frozenset[IPAddress]:
        """Return the allowed addresses; raise AllowlistUnavailableError when there is no fresh enough answer."""
        if self._addresses is None or self._resolved_at is None:
            raise AllowlistUnavailableError(f"the allowlist {self.host} has not been resolved yet")
        if self._clock() - self._resolved_at > self.max_stale:
            raise AllowlistUnavailableError(f"the allowlist {self.host} could not be refreshed for too long")
        return self._addresses

    def status(self) -> dict[str, Any]:
        """Describe the allowlist for an operator: addresses, age, last error, whether it is usable."""
        try:
            self.addresses()
            usable = True
        except AllowlistUnavailableError:
            usable = False
        return {
            "host": self.host,
            "ready": usable,
            "addresses": sorted(str(address) for address in self._addresses or ()),
            "age_seconds": None if self._resolved_at is None else round(self._clock() - self._resolved_at, 3),
            "last_error": self.last_error,
        }

    def size(self) -> int:
        """How many addresses the allowlist in use holds."""
        return len(self._addresses or ())

    def age(self) -> float:
        """Seconds since the last good answer (NaN before the first)."""
        return float("nan") if self._resolved_at is None else self._clock() - self._resolved_at

    async def refresh(self) -> float:
        """Look the name up once; return how many seconds to wait before the next lookup."""
        try:
            resolution = await self._resolver.resolve(self.host)
        except LookupFailedError as ex:
            self._failures += 1
            if self.last_error != str(ex):  # Log state changes, not every attempt.
                _LOGGER.warning(
                    "allowlist lookup failed; keeping the last good answer",
                    extra={"host": self.host, "error": str(ex), "addresses": len(self._addresses or ())},
                )
            self.last_error = str(ex)
            low, high = self._backoff
            return float(min(high, low * 2 ** (self._failures - 1)))
        if resolution.addresses != self._addresses or self.last_error is not None:
            _LOGGER.info(
                "allowlist resolved",
                extra={"host": self.host, "addresses": sorted(str(a) for a in resolution.addresses)},
            )
        self._addresses = resolution.addresses
        self._resolved_at = self._clock()
        self._failures = 0
        self.last_error = None
        return min(self._max_ttl, max(self._min_ttl, resolution.ttl))

    async def run(self) -> None:
        """Refresh forever; cancel the task to stop."""
        while True:
            delay = await self.refresh()
            await self._sleep(delay)


class Allowlist:
    """Decides whether a request comes from an allowed sender."""

    def __init__(
        self,
        *,
        allow_cidrs: Iterable[IPNetwork] = (),
        trusted_proxies: Iterable[IPNetwork] = (),
        dns_allowlist: DnsAllowlist | None = None,
        monitor_cidrs: Iterable[IPNetwork] = (),
    ) -> None:
        self._allow_cidrs = tuple(allow_cidrs)
        self._trusted_proxies = tuple(trusted_proxies)
        self._monitor_cidrs = tuple(monitor_cidrs)
        self.dns = dns_allowlist
        self._clients: dict[tuple[str, str | None], _Client] = {}

    def door(self, peer: str) -> str | None:
        """Whether a peer may open a connection at all (decided before any request is read): None when it may,
        else why not: ``source_not_allowed`` (it gets 403 at the door), or ``allowlist_unavailable`` (503 at the
        door: the DNS allowlist has no usable answer to tell, and Routee retries a 503).

        Trusted proxies speak for others and are admitted; so are monitoring networks (probes and scrapes; their
        callbacks still get 403) and every allowed address.
        """
        try:
            address = parse_address(peer)
        except ValueError:
            return "source_not_allowed"
        if any(
            _within(address, networks) for networks in (self._trusted_proxies, self._allow_cidrs, self._monitor_cidrs)
        ):
            return None
        if self.dns is None:
            return "source_not_allowed"
        try:
            return None if address in self.dns.addresses() else "source_not_allowed"
        except AllowlistUnavailableError:
            return "allowlist_unavailable"

    def monitor_only(self, peer: str) -> bool:
        """Whether a peer is admitted only as a monitoring network (not a sender, a proxy or a listed address):
        it may read monitoring pages and send no body."""
        try:
            address = parse_address(peer)
        except ValueError:
            return False
        if not _within(address, self._monitor_cidrs) or _within(address, self._trusted_proxies + self._allow_cidrs):
            return False
        try:
            return self.dns is None or address not in self.dns.addresses()
        except AllowlistUnavailableError:
            return False  # It may be a sender: its callbacks get 503 from the app, and Routee retries.

    def check_monitor(self, peer: str, forwarded_for: str | None) -> None:
        """Raise SourceNotAllowedError unless the client (after X-Forwarded-For from trusted proxies) is in a
        monitoring network: probes, metrics and the API description are for them only."""
        address = client_address(peer, forwarded_for, self._trusted_proxies)
        if not _within(address, self._monitor_cidrs):
            raise SourceNotAllowedError(f"{address} may not read monitoring pages (--monitor-cidr)")

    def check(self, peer: str, forwarded_for: str | None) -> IPAddress:
        """Return the client address when it is allowed.

        Raises SourceNotAllowedError (403) for anyone else, and
        AllowlistUnavailableError (503) when the DNS allowlist has no usable answer.
        """
        return self._allowed(peer, forwarded_for).address

    def sender(self, peer: str, forwarded_for: str | None) -> str:
        """``check``, the address as text (what is logged, and kept with a refused body)."""
        return self._allowed(peer, forwarded_for).text

    def _allowed(self, peer: str, forwarded_for: str | None) -> _Client:
        # What a peer and header say is remembered (Routee posts from a few addresses, thousands of times a
        # second); whether the address is allowed by DNS is asked every time, since the answer changes.
        key = (peer, forwarded_for)
        client = self._clients.get(key)
        if client is None:
            address = client_address(peer, forwarded_for, self._trusted_proxies)
            client = _Client(address, str(address), _within(address, self._allow_cidrs))
            if len(self._clients) >= _REMEMBERED_CLIENTS:
                self._clients.clear()
            self._clients[key] = client
        if not client.listed and (self.dns is None or client.address not in self.dns.addresses()):
            raise SourceNotAllowedError(f"{client.text} is not an allowed callback sender")
        return client
