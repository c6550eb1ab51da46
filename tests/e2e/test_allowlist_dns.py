"""End to end: the allowlist resolved through a real DNS server on loopback, senders on chosen loopback addresses."""

from __future__ import annotations

import socket
import time

import pytest

from conftest import StartService
from support.dns import Zone
from support.fixtures import fixture_bodies
from support.network import http_request, post_callback
from support.polling import eventually
from support.service_process import ServiceProcess

pytestmark = pytest.mark.e2e

NAME = "callbacksallow.routee.test"
BODY = fixture_bodies()["01-m1-queued.json"]


def dns_args(port: int, *extra: str) -> tuple[str, ...]:
    return ("--allowlist-host", NAME, "--dns-server", f"127.0.0.1:{port}", *extra)


def status_from(service: ServiceProcess, source: str, **headers: str) -> int:
    return post_callback(service.http_port, BODY, source=source, **headers).status


class TestDnsAllowlist:
    """Only what the name resolves to gets in."""

    def test_records_decide_and_changes_are_followed(
        self, start_service: StartService, dns_zone: tuple[Zone, int]
    ) -> None:
        """A and AAAA records are allowed, others get 403; a record change takes effect within 10 s (TTL 1 s)."""
        zone, port = dns_zone
        service = start_service(*dns_args(port), ready_path="/readyz")
        assert status_from(service, "127.0.0.2") == 200
        assert status_from(service, "127.0.0.3") == 200
        assert status_from(service, "127.0.0.4") == 403
        assert status_from(service, "127.0.0.1") == 403
        ready = http_request(service.http_port, "GET", "/readyz").json()
        assert ready["checks"]["allowlist"]["addresses"] == ["127.0.0.2", "127.0.0.3", "::1"]

        zone.a = ["127.0.0.4"]
        took = eventually(lambda: status_from(service, "127.0.0.4") == 200, "the new record is allowed", 10)
        assert status_from(service, "127.0.0.2") == 403
        print(f"record change took effect after {took:.1f}s")

    def test_ipv6_and_mapped_addresses(self, start_service: StartService, dns_zone: tuple[Zone, int]) -> None:
        """An AAAA record admits its IPv6 sender; on a dual-stack socket ::ffff:a.b.c.d is matched as IPv4."""
        _, port = dns_zone
        v6 = start_service(*dns_args(port), http_host="::1", ready_path="/readyz")
        assert post_callback(v6.http_port, BODY, source="::1", host="::1").status == 200
        dual = start_service(*dns_args(port), http_host="::", ready_path="/readyz")
        assert post_callback(dual.http_port, BODY, source="127.0.0.2", host="127.0.0.1").status == 200
        assert post_callback(dual.http_port, BODY, source="127.0.0.9", host="127.0.0.1").status == 403

    def test_outage_keeps_last_good_set(self, start_service: StartService, dns_zone: tuple[Zone, int]) -> None:
        """SERVFAIL or silence: Routee's last known addresses still get in, strangers stay out."""
        zone, port = dns_zone
        service = start_service(*dns_args(port, "--dns-min-ttl", "1"), ready_path="/readyz")
        for mode in ("servfail", "silent", "nxdomain"):
            zone.mode = mode
            before = zone.queries
            eventually(lambda before=before: zone.queries > before + 1, f"the service retries during {mode}", 15)
            assert status_from(service, "127.0.0.2") == 200
            assert status_from(service, "127.0.0.5") == 403
            ready = http_request(service.http_port, "GET", "/readyz").json()
            assert ready["ready"] is True
            assert ready["checks"]["allowlist"]["last_error"]
        zone.mode = "ok"

    def test_too_stale_is_503_not_an_open_door(self, start_service: StartService, dns_zone: tuple[Zone, int]) -> None:
        """Once the last good set is older than --dns-max-stale, callbacks get 503 and /readyz fails."""
        zone, port = dns_zone
        service = start_service(*dns_args(port, "--dns-min-ttl", "1", "--dns-max-stale", "2"), ready_path="/readyz")
        zone.mode = "servfail"
        eventually(lambda: status_from(service, "127.0.0.2") == 503, "a stale allowlist answers 503", 10)
        assert status_from(service, "127.0.0.9") == 503
        assert http_request(service.http_port, "GET", "/readyz").status == 503
        zone.mode = "ok"
        eventually(lambda: status_from(service, "127.0.0.2") == 200, "recovery without a restart", 15)

    def test_start_during_outage_then_recover(self, start_service: StartService, dns_zone: tuple[Zone, int]) -> None:
        """Started while DNS fails: 503 and not ready, then recovery without a restart."""
        zone, port = dns_zone
        zone.mode = "servfail"
        service = start_service(*dns_args(port, "--monitor-cidr", "127.0.0.1/32"), ready_path="/healthz")
        assert status_from(service, "127.0.0.2") == 503
        answer = post_callback(service.http_port, BODY, source="127.0.0.2")
        assert answer.json()["reason"] == "allowlist_unavailable"
        assert http_request(service.http_port, "GET", "/readyz").status == 503
        # A stranger meanwhile gets the door, not the app: 503 on its first bytes (even for a monitoring page),
        # and a silent one is dropped after the door's grace, not held.
        door = http_request(service.http_port, "GET", "/metrics", source="127.0.0.9")
        assert (door.status, door.json()["reason"]) == (503, "allowlist_unavailable")
        with socket.create_connection(("127.0.0.1", service.http_port), source_address=("127.0.0.9", 0)) as silent:
            silent.settimeout(10)
            started = time.monotonic()
            assert silent.recv(1) == b""
            assert time.monotonic() - started < 3
        zone.mode = "ok"
        eventually(lambda: status_from(service, "127.0.0.2") == 200, "the allowlist recovers", 15)
        assert http_request(service.http_port, "GET", "/readyz").status == 200


class TestForwardedFor:
    """X-Forwarded-For is believed only from trusted proxies."""

    def test_trusted_and_untrusted_peers(self, start_service: StartService, dns_zone: tuple[Zone, int]) -> None:
        """From the proxy, the right-most untrusted entry decides; from anyone else the header is ignored."""
        _, port = dns_zone
        service = start_service(
            *dns_args(
                port,
                "--trusted-proxy",
                "127.0.0.10/32",
                "--monitor-cidr",
                "127.0.0.1/32",
                "--monitor-cidr",
                "127.0.0.10/32",
            ),
            ready_path="/readyz",
        )
        proxy = "127.0.0.10"
        assert status_from(service, proxy) == 403  # The proxy itself is not Routee.
        assert status_from(service, proxy, X_Forwarded_For="127.0.0.2") == 200
        assert status_from(service, proxy, X_Forwarded_For="127.0.0.77, 127.0.0.2, 127.0.0.10") == 200
        # A stranger writing Routee's address first is still the stranger.
        assert status_from(service, proxy, X_Forwarded_For="127.0.0.2, 127.0.0.66") == 403
        # An untrusted peer cannot borrow Routee's address through the header.
        assert status_from(service, "127.0.0.4", X_Forwarded_For="127.0.0.2") == 403
        malformed = post_callback(service.http_port, BODY, source=proxy, X_Forwarded_For="127.0.0.2, garbage")
        assert malformed.status == 403
        assert "malformed" in malformed.json()["detail"]
        # Monitoring pages: the balancer's own probe reads them; a client it forwards from outside the monitoring
        # networks does not, nor does an allowed sender.
        for path in ("/metrics", "/readyz", "/healthz", "/openapi.json"):
            assert http_request(service.http_port, "GET", path, source=proxy).status in (200, 503), path
            outside = {"X-Forwarded-For": "203.0.113.7"}
            assert http_request(service.http_port, "GET", path, source=proxy, headers=outside).status == 403, path
            assert http_request(service.http_port, "GET", path, source="127.0.0.2").status == 403, path
