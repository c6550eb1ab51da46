"""End to end: a real ``serve`` — DNS allowlist on a real DNS server, reconciliation against a fake Routee, every
path of the ingress exercised — exports every metric the Grafana dashboard and the alerting rules use, and the
metrics added for them say what they should."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import StartService
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from support.dns import Zone
from support.fake_routee import APPLICATION_ID, SECRET, fake_routee
from support.fixtures import fixture, inbound_bodies
from support.monitoring_files import metric_names_used
from support.network import INBOUND_PATH, http_request, post_callback
from support.polling import eventually
from support.service_process import ServiceProcess
from support.streams import StreamCollector

pytestmark = pytest.mark.e2e

ROUTEE = "127.0.0.2"  # In the DNS zone's A records.
STRANGER = "127.0.0.9"


def scrape(service: ServiceProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, labels)."""
    text = http_request(service.http_port, "GET", "/metrics").body.decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_every_metric_the_dashboard_and_the_rules_use_is_exported(
    start_service: StartService, dns_zone: tuple[Zone, int]
) -> None:
    _, dns_port = dns_zone
    with fake_routee() as fake:
        service = start_service(
            "--allowlist-host", "callbacksallow.routee.test", "--dns-server", f"127.0.0.1:{dns_port}",
            "--dns-max-stale", "600", "--monitor-cidr", "127.0.0.1/32",
            "--routee-api-url", fake.url, "--routee-auth-url", fake.url, "--routee-application-id", APPLICATION_ID,
            "--reconcile-after", "1",
            env={"ROUTEE_CALLBACKS_ROUTEE_APPLICATION_SECRET": SECRET},
        )  # fmt: skip
        stream = StreamCollector(service.grpc_target, pb2.StreamStatusUpdatesRequest(after_sequence=0))
        try:
            started = time.time()
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")  # Recent enough to be reconciled.
            callback = {**fixture("01-m1-queued.json"), "createdAt": now}
            callback["status"] = {"name": "Queued", "updatedDate": now}
            body = json.dumps(callback).encode()
            assert post_callback(service.http_port, body, source=ROUTEE).status == 200
            assert post_callback(service.http_port, body, source=ROUTEE).status == 200  # duplicate
            adjusted = json.dumps({**callback, "trackingId": "monitoring-2", "ttl": "3600"}).encode()
            assert post_callback(service.http_port, adjusted, source=ROUTEE).status == 200
            assert post_callback(service.http_port, b'{"trackingId":', source=ROUTEE).status == 400
            inbound = next(iter(inbound_bodies().values()))
            headers = {"Content-Type": "application/json"}
            assert (
                http_request(service.http_port, "POST", INBOUND_PATH, inbound, source=ROUTEE, headers=headers).status
                == 200
            )
            with contextlib.suppress(OSError):  # Turned away at the door: 403 and closed, or closed unanswered.
                assert post_callback(service.http_port, body, source=STRANGER).status == 403
            stream.wait_for(2)

            eventually(
                lambda: not metric_names_used() - {name for name, _ in scrape(service)},
                "metrics used by docs/monitoring are exported",
                20,
                interval=0.5,
            )

            # Readiness is sampled every 5 s: a sample taken while the worker was still connecting to the writer
            # process says 0 until the next one.
            checks = [("routee_callbacks_ready", (("check", name),)) for name in ("store", "allowlist")]
            eventually(
                lambda: all(scrape(service).get(check) == 1 for check in checks), "ready checks pass", 30, interval=0.5
            )
            samples = scrape(service)
            assert samples[("routee_callbacks_allowlist_max_stale_seconds", ())] == 600
            assert samples[("routee_callbacks_allowlist_addresses", ())] == 3  # Two A records, one AAAA.
            assert samples[("routee_callbacks_allowlist_lookup_failing", ())] == 0
            assert samples[("routee_callbacks_store_write_failures_total", ())] == 0
            for kind in ("status", "inbound"):
                last = samples[("routee_callbacks_last_accepted_timestamp_seconds", (("kind", kind),))]
                assert started - 1 <= last <= time.time(), kind
        finally:
            stream.close()


def test_every_series_the_dashboard_and_the_rules_use_is_exported_from_the_start(
    start_service: StartService, dns_zone: tuple[Zone, int]
) -> None:
    """A service that has received nothing yet already exports every metric docs/monitoring uses, each with its
    known label values at 0: a panel shows 0, not "no data", and an alert can tell zero from absent."""
    _, dns_port = dns_zone
    service = start_service(
        "--allowlist-host", "callbacksallow.routee.test", "--dns-server", f"127.0.0.1:{dns_port}",
        "--monitor-cidr", "127.0.0.1/32",
    )  # fmt: skip
    samples = scrape(service)
    assert metric_names_used() - {name for name, _ in samples} == set(), "used by docs/monitoring, not exported"
    for name, labels in [
        ("routee_callbacks_callback_fields_adjusted_total", (("action", "coerced"), ("field", "ttl"))),
        ("routee_callbacks_http_connections_refused_total", (("reason", "source_not_allowed"),)),
        ("routee_callbacks_tracking_api_calls_total", (("endpoint", "message"), ("outcome", "unauthorized"))),
    ]:
        assert samples.get((name, labels)) == 0, (name, labels)
    assert samples[("routee_callbacks_last_accepted_timestamp_seconds", (("kind", "inbound"),))] == 0
