"""The allowlist: client address from peer and X-Forwarded-For, and the DNS refresh policy with a fake clock."""

from __future__ import annotations

import ipaddress

import pytest

from http_ingress.allowlist import Allowlist, DnsAllowlist, LookupFailedError, Resolution, client_address
from service.domain.errors import AllowlistUnavailableError, SourceNotAllowedError

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


class TestClientAddress:
    """Which address is the client."""

    def test_peer_without_proxies(self) -> None:
        """With no trusted proxies the peer is the client, whatever X-Forwarded-For says."""
        assert client_address("192.0.2.1", "198.51.100.7", ()) == ip("192.0.2.1")

    def test_ipv4_mapped_peer(self) -> None:
        """::ffff:a.b.c.d is the IPv4 address."""
        assert client_address("::ffff:192.0.2.1", None, ()) == ip("192.0.2.1")

    def test_untrusted_peer_header_ignored(self) -> None:
        """X-Forwarded-For from a peer that is not a trusted proxy is not believed."""
        assert client_address("192.0.2.1", "198.51.100.7", PROXIES) == ip("192.0.2.1")

    def test_rightmost_untrusted_entry(self) -> None:
        """From a trusted proxy, the right-most entry that is not a trusted proxy is the client."""
        header = "203.0.113.9, 198.51.100.7, 10.1.1.1"
        assert client_address("10.0.0.1", header, PROXIES) == ip("198.51.100.7")

    def test_spoofed_leftmost_entry_is_ignored(self) -> None:
        """A client cannot pose as Routee by writing Routee's address first."""
        assert client_address("10.0.0.1", "198.51.100.1, 203.0.113.66", PROXIES) == ip("203.0.113.66")

    def test_mapped_entry_in_header(self) -> None:
        """Entries are normalised too."""
        assert client_address("::ffff:10.0.0.1", "::ffff:198.51.100.7", PROXIES) == ip("198.51.100.7")

    @pytest.mark.parametrize("header", ["not-an-ip", "198.51.100.7, ", "198.51.100.7:443", ""])
    def test_malformed_header_from_proxy(self, header: str) -> None:
        """A malformed X-Forwarded-For from a trusted proxy is refused."""
        with pytest.raises(SourceNotAllowedError, match="malformed"):
            client_address("10.0.0.1", header, PROXIES)


class FakeResolver:
    """Answers from a script: a Resolution or an error per call."""

    def __init__(self, *answers: Resolution | LookupFailedError) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def resolve(self, name: str) -> Resolution:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, LookupFailedError):
            raise answer
        return answer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(*addresses: str, ttl: float = 60) -> Resolution:
    return Resolution(frozenset(ip(a) for a in addresses), ttl)


class TestDnsAllowlist:
    """Refresh timing, failure policy and staleness."""

    def make(self, resolver: FakeResolver, clock: FakeClock) -> DnsAllowlist:
        return DnsAllowlist("routee.test", resolver, min_ttl=5, max_ttl=300, max_stale=3600, clock=clock)

    async def test_unavailable_before_first_answer(self) -> None:
        """Before any answer the allowlist refuses to decide."""
        allowlist = self.make(FakeResolver(), FakeClock())
        with pytest.raises(AllowlistUnavailableError):
            allowlist.addresses()
        assert allowlist.status()["ready"] is False

    @pytest.mark.parametrize(("ttl", "delay"), [(0, 5), (1, 5), (60, 60), (86400, 300)])
    async def test_ttl_is_clamped(self, ttl: float, delay: float) -> None:
        """The next refresh follows the TTL within [min, max]."""
        allowlist = self.make(FakeResolver(answer("192.0.2.1", ttl=ttl)), FakeClock())
        assert await allowlist.refresh() == delay
        assert allowlist.addresses() == {ip("192.0.2.1")}

    async def test_failures_back_off_and_keep_last_good(self) -> None:
        """Failures retry at 1, 2, 4 … 60 s and keep the last good set until it is too old."""
        failure = LookupFailedError("SERVFAIL")
        clock = FakeClock()
        allowlist = self.make(FakeResolver(answer("192.0.2.1"), *[failure] * 9), clock)
        await allowlist.refresh()
        delays = [await allowlist.refresh() for _ in range(8)]
        assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
        assert allowlist.addresses() == {ip("192.0.2.1")}
        assert allowlist.status()["last_error"] == "SERVFAIL"
        clock.now += 3601
        with pytest.raises(AllowlistUnavailableError, match="too long"):
            allowlist.addresses()

    async def test_recovery_resets_backoff_and_error(self) -> None:
        """A good answer after failures clears the error and the backoff."""
        resolver = FakeResolver(LookupFailedError("timeout"), LookupFailedError("timeout"), answer("192.0.2.9"))
        allowlist = self.make(resolver, FakeClock())
        assert [await allowlist.refresh() for _ in range(3)] == [1, 2, 60]
        assert allowlist.status()["last_error"] is None
        assert allowlist.addresses() == {ip("192.0.2.9")}

    async def test_run_sleeps_what_refresh_says(self) -> None:
        """run() refreshes, then sleeps the delay refresh returned."""
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)
            if len(slept) == 2:
                raise RuntimeError("stop")

        resolver = FakeResolver(answer("192.0.2.1", ttl=30), LookupFailedError("NXDOMAIN"))
        allowlist = DnsAllowlist("routee.test", resolver, clock=FakeClock(), sleep=sleep)
        with pytest.raises(RuntimeError, match="stop"):
            await allowlist.run()
        assert slept == [30, 1]


class TestAllowlist:
    """Putting it together."""

    async def test_decisions(self) -> None:
        """CIDRs always pass, DNS addresses pass when fresh, others get 403, a stale DNS set 503."""
        clock = FakeClock()
        dns = DnsAllowlist("routee.test", FakeResolver(answer("192.0.2.1", "2001:db8::1")), clock=clock, max_stale=10)
        allowlist = Allowlist(allow_cidrs=[ipaddress.ip_network("127.0.0.0/8")], dns_allowlist=dns)
        assert allowlist.check("127.0.0.5", None) == ip("127.0.0.5")
        with pytest.raises(AllowlistUnavailableError):
            allowlist.check("192.0.2.1", None)
        await dns.refresh()
        assert allowlist.check("::ffff:192.0.2.1", None) == ip("192.0.2.1")
        assert allowlist.check("2001:db8::1", None) == ip("2001:db8::1")
        with pytest.raises(SourceNotAllowedError):
            allowlist.check("192.0.2.2", None)
        clock.now += 11
        with pytest.raises(AllowlistUnavailableError):
            allowlist.check("192.0.2.1", None)
        assert allowlist.check("127.0.0.1", None) == ip("127.0.0.1")

    async def test_a_remembered_sender_is_asked_of_dns_every_time(self) -> None:
        """A sender seen before is refused as soon as a new DNS answer leaves it out; its text is the plain
        address."""
        dns = DnsAllowlist("routee.test", FakeResolver(answer("192.0.2.1"), answer("192.0.2.9")), clock=FakeClock())
        allowlist = Allowlist(dns_allowlist=dns)
        await dns.refresh()
        assert allowlist.sender("::ffff:192.0.2.1", None) == "192.0.2.1"
        assert allowlist.sender("::ffff:192.0.2.1", None) == "192.0.2.1"
        await dns.refresh()
        with pytest.raises(SourceNotAllowedError, match=r"192\.0\.2\.1 is not"):
            allowlist.sender("::ffff:192.0.2.1", None)
        assert allowlist.sender("192.0.2.9", None) == "192.0.2.9"

    def test_without_dns_only_cidrs(self) -> None:
        """With the DNS allowlist off, only --allow-cidr networks pass."""
        allowlist = Allowlist(allow_cidrs=[ipaddress.ip_network("10.0.0.0/8")])
        assert allowlist.check("10.2.3.4", None) == ip("10.2.3.4")
        with pytest.raises(SourceNotAllowedError):
            allowlist.check("192.0.2.1", None)

    async def test_the_door_before_and_after_the_first_answer(self) -> None:
        """Before the DNS allowlist has an answer, a stranger is turned away at the door with 503 (not admitted
        to read and hold a connection); after it, with 403; allowed senders, proxies and monitors always pass."""
        dns = DnsAllowlist("routee.test", FakeResolver(answer("192.0.2.1")), clock=FakeClock())
        allowlist = Allowlist(
            allow_cidrs=[ipaddress.ip_network("10.0.0.0/8")],
            trusted_proxies=[ipaddress.ip_network("172.16.0.0/12")],
            monitor_cidrs=[ipaddress.ip_network("127.0.0.0/8")],
            dns_allowlist=dns,
        )
        assert [allowlist.door(peer) for peer in ("10.1.1.1", "172.16.0.9", "127.0.0.1")] == [None, None, None]
        assert allowlist.door("203.0.113.7") == "allowlist_unavailable"
        await dns.refresh()
        assert allowlist.door("192.0.2.1") is None
        assert allowlist.door("203.0.113.7") == "source_not_allowed"
        assert allowlist.door("not an address") == "source_not_allowed"

    def test_monitoring_pages_by_the_forwarded_client(self) -> None:
        """Monitoring pages are for monitoring networks only, judged after X-Forwarded-For from a trusted proxy:
        the proxy's own probe passes, a client on the internet behind it does not, nor does an allowed sender."""
        allowlist = Allowlist(
            allow_cidrs=[ipaddress.ip_network("10.0.0.0/8")],
            trusted_proxies=[ipaddress.ip_network("192.168.1.0/24")],
            monitor_cidrs=[ipaddress.ip_network("192.168.0.0/16")],
        )
        allowlist.check_monitor("192.168.1.5", None)  # The balancer's own health check.
        allowlist.check_monitor("192.168.1.5", "192.168.7.7")  # Prometheus through the balancer.
        for peer, forwarded in [("192.168.1.5", "203.0.113.7"), ("10.0.0.1", None), ("203.0.113.7", "192.168.7.7")]:
            with pytest.raises(SourceNotAllowedError):
                allowlist.check_monitor(peer, forwarded)

    async def test_monitor_only_peers(self) -> None:
        """A monitoring network's address that is no sender, proxy or listed address is monitor-only; while the
        DNS allowlist has no answer nobody is (a sender's callbacks must get 503, not a refusal)."""
        dns = DnsAllowlist("routee.test", FakeResolver(answer("127.0.0.2")), clock=FakeClock())
        allowlist = Allowlist(
            allow_cidrs=[ipaddress.ip_network("127.0.0.3/32")],
            monitor_cidrs=[ipaddress.ip_network("127.0.0.0/8")],
            dns_allowlist=dns,
        )
        assert not allowlist.monitor_only("127.0.0.9")  # Unknown yet.
        await dns.refresh()
        assert [allowlist.monitor_only(peer) for peer in ("127.0.0.9", "127.0.0.2", "127.0.0.3", "10.0.0.1")] == [
            True,
            False,
            False,
            False,
        ]
