"""The Falcon app on create_app, through falcon.testing, with a real store and broker."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from http_ingress.allowlist import Allowlist
from http_ingress.app import CALLBACKS_PATH, INBOUND_PATH
from service.domain.entries import EventFilter
from service.domain.rules import INBOUND, STATUS
from support.embedded import Embedded
from support.fixtures import fixture, fixture_bodies, inbound_bodies

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
JSON_HEADERS = {"Content-Type": "application/json"}


class Harness(Embedded):
    """The app with its real collaborators, and a subscription to see what was published."""

    def __init__(self, tmp_path: Path, allowlist: Allowlist) -> None:
        super().__init__(str(tmp_path / "app.db"), allowlist=allowlist)
        self.subscription = self.broker.subscribe(EventFilter())

    async def published(self) -> list[int]:
        await self.settle()
        return [update.sequence for update in await self.subscription.next_batch(0.01) or []]

    async def stored(self) -> int:
        return len(await self.store.events_after(0, EventFilter(), 10_000))


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path, Allowlist(allow_cidrs=[LOOPBACK], monitor_cidrs=[LOOPBACK]))
    await harness.start()
    yield harness
    await harness.stop()


async def post(
    harness: Harness, body: bytes, headers: dict[str, str] | None = None, path: str = CALLBACKS_PATH, **kwargs: Any
) -> Any:
    async with falcon.testing.ASGIConductor(harness.app) as conductor:
        return await conductor.simulate_post(
            path, body=body, headers=JSON_HEADERS if headers is None else headers, **kwargs
        )


class TestCallbacks:
    """POST /v1/callbacks/viber."""

    async def test_accepted_then_duplicate(self, harness: Harness) -> None:
        """A new callback is stored and published once; the same again is a 200 duplicate, not published."""
        body = fixture_bodies()["01-m1-queued.json"]
        first = await post(harness, body)
        assert first.status_code == 200
        assert first.json == {"status": "accepted", "sequence": 1}
        assert await harness.published() == [1]
        again = await post(harness, body)
        assert again.status_code == 200
        assert again.json == {"status": "duplicate"}
        assert await harness.published() == []
        assert await harness.stored() == 1

    async def test_charset_parameter_is_fine(self, harness: Harness) -> None:
        """application/json; charset=utf-8 is JSON."""
        response = await post(
            harness, fixture_bodies()["02-m1-delivered.json"], {"Content-Type": "application/json; charset=utf-8"}
        )
        assert response.status_code == 200

    @pytest.mark.parametrize(
        ("body", "headers", "status", "reason"),
        [
            (b"{}", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
            (b"{}", {}, 415, "unsupported_media_type"),
            (b"{not json", JSON_HEADERS, 400, "malformed_json"),
            (b"\xff\xfe", JSON_HEADERS, 400, "malformed_json"),
            (b'{"trackingId": "t"}', JSON_HEADERS, 422, "invalid_callback"),
            (b"x" * 65537, JSON_HEADERS, 413, "payload_too_large"),
        ],
    )
    async def test_rejections_store_nothing(
        self, harness: Harness, body: bytes, headers: dict[str, str], status: int, reason: str
    ) -> None:
        """Every rejection has its status, a problem+json body naming the problem, and stores nothing."""
        response = await post(harness, body, headers)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json["status"] == status
        assert response.json["reason"] == reason
        assert response.json["detail"]
        assert await harness.stored() == 0
        assert await harness.published() == []

    async def test_invalid_callback_names_the_field(self, harness: Harness) -> None:
        """422 names the offending field."""
        document = fixture("01-m1-queued.json")
        del document["status"]["updatedDate"]
        response = await post(harness, json.dumps(document).encode())
        assert response.status_code == 422
        assert response.json["field"] == "status.updatedDate"

    async def test_exactly_64_kib_is_accepted_size(self, harness: Harness) -> None:
        """65 536 bytes is not too large (it is then judged as JSON)."""
        document = fixture("01-m1-queued.json")
        document["padding"] = ""
        base = len(json.dumps(document).encode())
        document["padding"] = "x" * (65536 - base)
        body = json.dumps(document).encode()
        assert len(body) == 65536
        assert (await post(harness, body)).status_code == 200

    async def test_source_not_allowed(self, tmp_path: Path) -> None:
        """A sender outside the allowlist gets 403 and nothing is stored."""
        harness = Harness(tmp_path, Allowlist(allow_cidrs=[ipaddress.ip_network("10.0.0.0/8")]))
        await harness.start()
        try:
            response = await post(harness, fixture_bodies()["01-m1-queued.json"], remote_addr="192.0.2.1")
            assert response.status_code == 403
            assert response.json["reason"] == "source_not_allowed"
            assert await harness.stored() == 0
        finally:
            await harness.stop()

    async def test_store_failure_is_503(self, harness: Harness) -> None:
        """When the store cannot write, the callback gets 503, never 200."""
        await harness.log.writer.stop()  # The writer is gone: the store cannot keep anything.
        response = await post(harness, fixture_bodies()["01-m1-queued.json"])
        assert response.status_code == 503
        assert response.json["reason"] == "store_unavailable"
        assert "retry-after" in response.headers


class TestOtherRoutes:
    """Probes, metrics, unknown paths and methods."""

    async def test_probes(self, harness: Harness) -> None:
        """/healthz and /readyz answer 200 with a working store."""
        async with falcon.testing.ASGIConductor(harness.app) as conductor:
            assert (await conductor.simulate_get("/healthz")).status_code == 200
            ready = await conductor.simulate_get("/readyz")
        assert ready.status_code == 200
        assert ready.json == {"ready": True, "checks": {"store": {"ready": True}}}

    async def test_readyz_fails_with_store_down(self, harness: Harness) -> None:
        """/readyz says which check fails."""
        await harness.log.writer.stop()
        async with falcon.testing.ASGIConductor(harness.app) as conductor:
            ready = await conductor.simulate_get("/readyz")
        assert ready.status_code == 503
        assert ready.json["checks"]["store"]["ready"] is False

    async def test_metrics_count_outcomes(self, harness: Harness) -> None:
        """/metrics counts callbacks by outcome in Prometheus text format."""
        body = fixture_bodies()["01-m1-queued.json"]
        await post(harness, body)
        await post(harness, body)
        await post(harness, b"nope")
        async with falcon.testing.ASGIConductor(harness.app) as conductor:
            metrics = await conductor.simulate_get("/metrics")
        assert metrics.status_code == 200
        text = metrics.text
        assert 'routee_callbacks_callbacks_total{channel="viber",outcome="accepted",reason=""} 1.0' in text
        assert 'routee_callbacks_callbacks_total{channel="viber",outcome="duplicate",reason=""} 1.0' in text
        rejected = 'routee_callbacks_callbacks_total{channel="viber",outcome="rejected",reason="malformed_json"} 1.0'
        assert rejected in text

    @pytest.mark.parametrize(("method", "path", "status"), [("GET", "/nope", 404), ("GET", CALLBACKS_PATH, 405)])
    async def test_unknown_paths_and_methods(self, harness: Harness, method: str, path: str, status: int) -> None:
        """Unknown paths and methods answer problem+json too."""
        async with falcon.testing.ASGIConductor(harness.app) as conductor:
            response = await conductor.simulate_request(method, path)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json["status"] == status


def with_changes(**changes: Any) -> bytes:
    """The Delivered fixture with some fields replaced (``status__reason`` reaches into ``status``)."""
    document = fixture("02-m1-delivered.json")
    for path, value in changes.items():
        target = document
        *parents, last = path.split("__")
        for parent in parents:
            target = target[parent]
        target[last] = value
    return json.dumps(document).encode()


class TestNothingRouteeSendsIsLost:
    """Tolerant secondary fields, the quarantine, a writer that cannot die (issue 11)."""

    @pytest.mark.parametrize(
        "changes",
        [
            {"ttl": "3600"},
            {"price": "0.01"},
            {"groups": "vip"},
            {"createdAt": "garbage"},
            {"status__reason": "Not Viber User"},
            {"body": "hi"},
        ],
    )
    async def test_a_secondary_field_of_an_unexpected_type_is_kept_with_200(
        self, harness: Harness, changes: dict[str, Any]
    ) -> None:
        """Each row of the issue's table: 200, the status stored, the field counted in the metrics."""
        response = await post(harness, with_changes(**changes))
        assert response.status_code == 200, response.text
        [event] = await harness.store.history("a1b2c3d4-0000-4000-8000-000000000001")
        assert event.status_name == "Delivered"
        field = next(iter(changes)).replace("__", ".")
        counted = harness.metrics.registry.get_sample_value(
            "routee_callbacks_callback_fields_adjusted_total", {"field": field, "action": "coerced"}
        ) or harness.metrics.registry.get_sample_value(
            "routee_callbacks_callback_fields_adjusted_total", {"field": field, "action": "dropped"}
        )
        assert counted == 1

    async def test_a_byte_order_mark_and_a_lone_surrogate_are_kept_with_200(self, harness: Harness) -> None:
        """A UTF-8 byte-order mark, and a lone surrogate escape in a field the service does not even know: 200,
        stored, raw_json as it came."""
        body = b"\xef\xbb\xbf" + fixture_bodies()["01-m1-queued.json"][:-2] + b', "note": "\\udc00"}'
        assert body.endswith(b'"\\udc00"}')
        response = await post(harness, body)
        assert response.status_code == 200, response.text
        [event] = await harness.store.history("a1b2c3d4-0000-4000-8000-000000000001")
        assert event.status_name == "Queued"

    async def test_a_422_from_an_allowed_sender_is_quarantined_and_a_retry_counted(self, harness: Harness) -> None:
        """The refused body, its sender and the answer are kept; the same body again only raises the count."""
        body = b'{"trackingId": "t", "status": {"name": "Queued"}}'
        for _ in range(2):
            response = await post(harness, body, remote_addr="127.0.0.9")
            assert response.status_code == 422
        [held] = await harness.store.quarantined()
        assert (held.status, held.reason, held.peer, held.attempts, held.body) == (
            422,
            "invalid_callback",
            "127.0.0.9",
            2,
            body,
        )
        assert "status.updatedDate" in held.detail
        assert await harness.stored() == 0

    @pytest.mark.parametrize(
        ("body", "headers", "status"),
        [
            (b"{oops", {"Content-Type": "application/json"}, 400),
            (fixture_bodies()["01-m1-queued.json"], {"Content-Type": "text/plain"}, 415),
            (b"[" + b"1," * 40_000 + b"1]", {"Content-Type": "application/json"}, 413),
        ],
    )
    async def test_400_413_and_415_are_quarantined_too(
        self, harness: Harness, body: bytes, headers: dict[str, str], status: int
    ) -> None:
        """Whatever an allowed sender's body was refused for, an operator can see it (at most 64 KiB of it)."""
        response = await post(harness, body, headers)
        assert response.status_code == status
        [held] = await harness.store.quarantined()
        assert held.status == status
        assert held.body == body[: 64 * 1024]

    async def test_a_strangers_403_is_never_kept(self, tmp_path: Path) -> None:
        """A sender outside the allowlist leaves no trace."""
        harness = Harness(tmp_path, Allowlist(allow_cidrs=[ipaddress.ip_network("10.0.0.0/8")]))
        await harness.start()
        try:
            assert (await post(harness, b"{oops", remote_addr="192.0.2.1")).status_code == 403
            assert await harness.store.quarantined() == []
        finally:
            await harness.stop()

    async def test_a_refusal_the_quarantine_cannot_keep_is_a_503(self, harness: Harness) -> None:
        """If even the quarantine cannot keep the body, Routee must retry: 503, not 422."""
        await harness.log.writer.stop()
        response = await post(harness, b'{"trackingId": "t"}')
        assert response.status_code == 503

    async def test_an_injected_failure_that_is_not_a_database_error_is_503_then_200(self, tmp_path: Path) -> None:
        """The writer survives a bug in a batch: that callback gets 503 and the next one 200."""
        harness = Harness(tmp_path, Allowlist(allow_cidrs=[LOOPBACK], monitor_cidrs=[LOOPBACK]))
        store = harness.store
        real_write = store.write
        failures = [RuntimeError("a bug in the middle of a batch")]

        async def failing_once(jobs: Any, now_us: int) -> Any:
            if failures:
                raise failures.pop()
            return await real_write(jobs, now_us)

        store.write = failing_once  # type: ignore[method-assign]  # an injected fault, not a mock of behaviour
        await harness.start()
        try:
            first = await post(harness, fixture_bodies()["01-m1-queued.json"])
            assert first.status_code == 503
            assert first.json["reason"] == "store_unavailable"
            second = await post(harness, fixture_bodies()["01-m1-queued.json"])
            assert (second.status_code, second.json["status"]) == (200, "accepted")
        finally:
            await harness.stop()


class TestInbound:
    """POST /v1/callbacks/viber/inbound: the same answers and guarantees as the status endpoint."""

    async def test_accepted_then_duplicate_and_published_as_a_reply(self, harness: Harness) -> None:
        replies = harness.broker.subscribe(EventFilter(inbound=True))
        body = inbound_bodies()["01-m1-reply-text.json"]
        first = await post(harness, body, path=INBOUND_PATH)
        assert (first.status_code, first.json) == (200, {"status": "accepted", "sequence": 1})
        again = await post(harness, body, path=INBOUND_PATH)
        assert (again.status_code, again.json) == (200, {"status": "duplicate"})
        await harness.settle()
        assert [update.sequence for update in await replies.next_batch(0.01) or []] == [1]
        assert await harness.published() == [], "status subscribers do not get replies"
        counted = harness.metrics.registry.get_sample_value(
            "routee_callbacks_inbound_messages_total", {"outcome": "duplicate", "reason": "", "channel": "viber"}
        )
        assert counted == 1

    async def test_a_reply_that_cannot_be_identified_is_422_and_quarantined_as_a_reply(self, harness: Harness) -> None:
        body = b'{"message": "yes", "sentDate": "2024-05-01T10:00:00Z"}'
        response = await post(harness, body, path=INBOUND_PATH, remote_addr="127.0.0.9")
        assert (response.status_code, response.json["field"]) == (422, "from")
        [held] = await harness.store.quarantined()
        assert (held.kind, held.status, held.body) == (INBOUND, 422, body)
        refused = await post(harness, b"{}", {"Content-Type": "text/plain"}, path=INBOUND_PATH)
        assert refused.status_code == 415
        assert [item.kind for item in await harness.store.quarantined()] == [INBOUND, INBOUND]

    async def test_a_stranger_gets_403_and_nothing_is_kept(self, tmp_path: Path) -> None:
        harness = Harness(tmp_path, Allowlist(allow_cidrs=[ipaddress.ip_network("10.0.0.0/8")]))
        await harness.start()
        try:
            response = await post(harness, inbound_bodies()["01-m1-reply-text.json"], path=INBOUND_PATH)
            assert response.status_code == 403
            assert await harness.store.quarantined() == []
            assert await harness.store.replies("a1b2c3d4-0000-4000-8000-000000000001") == []
        finally:
            await harness.stop()


class TestReplay:
    """Replaying the quarantine after the rules changed."""

    async def test_what_passes_now_is_stored_published_and_released(self, harness: Harness) -> None:
        """A body refused under old rules is stored as a normal event once the rules accept it; the rest stays."""
        from service.cli.quarantine import replay
        from service.domain.errors import InvalidCallbackError
        from service.runtime.wiring import parsers

        good = fixture_bodies()["01-m1-queued.json"]
        bad = b'{"trackingId": "t", "status": {"name": "Queued"}}'
        for body in (good, bad):  # Refused by stricter rules than today's (an older version, say).
            await harness.ingest.refuse(STATUS, body, "127.0.0.2", InvalidCallbackError("ttl", "old rules"))
        report = await replay(harness.store, parsers(), None)
        assert [(item.body, event is not None) for item, event in report.stored] == [(good, True)]
        assert [item.body for item, _ in report.refused] == [bad]
        assert [item.body for item in await harness.store.quarantined()] == [bad]
        assert await harness.published() == [1], "the log's follower publishes what another writer stored"

    async def test_a_quarantined_reply_is_replayed_as_a_reply(self, harness: Harness) -> None:
        from service.cli.quarantine import replay
        from service.domain.errors import InvalidCallbackError
        from service.runtime.wiring import parsers

        body = inbound_bodies()["01-m1-reply-text.json"]
        await harness.ingest.refuse(INBOUND, body, "127.0.0.2", InvalidCallbackError("from", "old rules"))
        report = await replay(harness.store, parsers(), None)
        assert [item.kind for item, _ in report.stored] == [INBOUND]
        assert len(await harness.store.replies("a1b2c3d4-0000-4000-8000-000000000001")) == 1
