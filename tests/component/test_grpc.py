"""The gRPC server on port 0 with a real channel, a real store and broker."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health

from routee.callbacks.v1 import callback_pb2 as pb
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from routee.callbacks.v1 import message_status_service_pb2_grpc as pb2_grpc
from service.api.server import create_server
from service.api.servicer import MessageStatusServicer
from service.config.values import HostPort
from service.domain.limits import MAX_BATCH_IDS, MAX_GRPC_REQUEST_BYTES, MAX_ID_LENGTH
from service.routee.callbacks import parse_callback
from service.store import PruneChunk
from support.embedded import Embedded
from support.fixtures import fixture_bodies, inbound_bodies
from support.polling import eventually_async

CAMPAIGN_A = "c0ffee00-0000-4000-8000-0000000000a1"
CAMPAIGN_B = "c0ffee00-0000-4000-8000-0000000000b2"


def callback(index: int, campaign: str = "load", name: str = "Queued") -> pb.ViberCallback:
    return parse_callback(
        f'{{"trackingId": "m{index}", "campaignTrackingId": "{campaign}",'
        f' "status": {{"name": "{name}", "updatedDate": "2024-05-01T10:00:00Z"}}}}'.encode()
    ).callback


class Server(Embedded):
    """The embedded service with its gRPC server on a free port and a stub on a real channel."""

    def __init__(
        self, database: str, *, queue_size: int, progress: float, max_streams: int, per_client: int | None = None
    ) -> None:
        super().__init__(database, queue_size=queue_size)
        servicer = MessageStatusServicer(
            self.store,
            self.broker,
            self.metrics,
            max_streams=max_streams,
            max_streams_per_client=per_client,
            progress_interval=progress,
        )
        # Every interface, IPv6 and IPv4: a channel to ::1 and one to 127.0.0.1 are two clients.
        self.server, self.port = create_server(
            HostPort("::", 0), servicer, health.aio.HealthServicer(), max_streams=max_streams
        )
        self.stub = pb2_grpc.MessageStatusServiceStub(grpc.aio.insecure_channel(f"127.0.0.1:{self.port}"))

    async def start(self) -> None:
        await super().start()
        await self.server.start()

    async def stop(self) -> None:
        self.broker.close()
        await self.server.stop(None)
        await super().stop()


async def start(
    tmp_path: Path,
    *,
    queue_size: int = 1024,
    progress: float = 30.0,
    max_streams: int = 100,
    per_client: int | None = None,
) -> Server:
    server = Server(
        str(tmp_path / "grpc.db"),
        queue_size=queue_size,
        progress=progress,
        max_streams=max_streams,
        per_client=per_client,
    )
    await server.start()
    return server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    running = await start(tmp_path)
    yield running
    await running.stop()


async def read_items(call: grpc.aio.UnaryStreamCall, field: str, count: int, seconds: float) -> list[Any]:
    """Read a stream's items until ``count`` of them had ``field`` set; return those fields."""
    found: list[Any] = []
    async with asyncio.timeout(seconds):
        while len(found) < count:
            item = await call.read()
            assert item is not grpc.aio.EOF, f"stream ended after {len(found)} items with {field}"
            if item.HasField(field):
                found.append(getattr(item, field))
    return found


async def read_updates(call: grpc.aio.UnaryStreamCall, count: int, seconds: float = 10) -> list[pb2.StatusUpdate]:
    """Read items until ``count`` status updates arrived."""
    return await read_items(call, "status_update", count, seconds)


class TestGetMessageStatus:
    """GetMessageStatus."""

    async def test_fixtures_in_any_order(self, server: Server) -> None:
        """Fixtures posted shuffled and duplicated give each message its right current status and history."""
        bodies = list(fixture_bodies().values()) * 2
        random.Random(7).shuffle(bodies)
        for body in bodies:
            await server.append(parse_callback(body).callback)
        expected = {
            "1": (pb.MESSAGE_STATUS_SEEN, "Seen", ["Queued", "Delivered", "Seen"]),
            "2": (pb.MESSAGE_STATUS_FAILED, "Failed", ["QUEUED", "Failed"]),
            "3": (pb.MESSAGE_STATUS_EXPIRED, "Expired", ["delivered", "Expired"]),
            "4": (pb.MESSAGE_STATUS_UNDELIVERED, "Undelivered", ["Undelivered"]),
            "5": (pb.MESSAGE_STATUS_UNSENT, "Unsent", ["Unsent"]),
        }
        for suffix, (status, name, history) in expected.items():
            response = await server.stub.GetMessageStatus(
                pb2.GetMessageStatusRequest(tracking_id=f"a1b2c3d4-0000-4000-8000-00000000000{suffix}")
            )
            assert (response.status, response.status_name) == (status, name)
            assert [event.status_name for event in response.events] == history
            assert response.callback.status.name == name
            assert response.sequence == max(e.sequence for e in response.events if e.status_name == name)
            assert response.campaign_tracking_id == (CAMPAIGN_A if suffix in "123" else CAMPAIGN_B)
            assert all(event.receive_time.seconds > 0 for event in response.events)

    async def test_errors(self, server: Server) -> None:
        """Unknown id → NOT_FOUND; empty id → INVALID_ARGUMENT."""
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await server.stub.GetMessageStatus(pb2.GetMessageStatusRequest(tracking_id="nope"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await server.stub.GetMessageStatus(pb2.GetMessageStatusRequest())
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def test_oversized_request(self, server: Server) -> None:
        """A request over the size limit is RESOURCE_EXHAUSTED."""
        too_large = "x" * (MAX_GRPC_REQUEST_BYTES + 1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.stub.GetMessageStatus(pb2.GetMessageStatusRequest(tracking_id=too_large))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


class TestStream:
    """StreamStatusUpdates."""

    async def test_live_filtered_by_campaign(self, server: Server) -> None:
        """A campaign subscriber sees its campaign's distinct changes once, in increasing sequence."""
        call = server.stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest(campaign_tracking_id=CAMPAIGN_B))
        await call.initial_metadata()
        for body in list(fixture_bodies().values()) * 2:
            await server.append(parse_callback(body).callback)
        updates = await read_updates(call, 2)
        assert [u.tracking_id[-1] for u in updates] == ["4", "5"]
        assert updates[0].sequence < updates[1].sequence
        assert all(u.is_current and u.campaign_tracking_id == CAMPAIGN_B for u in updates)
        assert updates[1].callback.status.reason.detailed_status == "System Failure"
        call.cancel()

    async def test_resume_replays_then_goes_live(self, server: Server) -> None:
        """after_sequence replays what follows it, then continues live, with no gap and no duplicate."""
        for index in range(1, 101):
            await server.append(callback(index))
        call = server.stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest(after_sequence=40))
        await call.initial_metadata()
        writer = asyncio.gather(*(server.append(callback(index)) for index in range(101, 1101)))
        updates = await read_updates(call, 1060)
        await writer
        assert [u.sequence for u in updates] == list(range(41, 1101))
        call.cancel()

    async def test_resume_from_zero_is_everything(self, server: Server) -> None:
        """after_sequence=0 is "from the beginning"."""
        for index in range(1, 4):
            await server.append(callback(index))
        call = server.stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest(after_sequence=0))
        assert [u.sequence for u in await read_updates(call, 3)] == [1, 2, 3]
        call.cancel()

    async def test_snapshot_then_marker_then_live(self, server: Server) -> None:
        """include_snapshot sends every current status of the filter, the marker, then live updates."""
        for body in fixture_bodies().values():
            await server.append(parse_callback(body).callback)
        call = server.stub.StreamStatusUpdates(
            pb2.StreamStatusUpdatesRequest(campaign_tracking_id=CAMPAIGN_A, include_snapshot=True)
        )
        items = [await call.read() for _ in range(4)]
        snapshot = [item.status_update for item in items[:3]]
        assert {(u.tracking_id[-1], u.status_name) for u in snapshot} == {
            ("1", "Seen"),
            ("2", "Failed"),
            ("3", "Expired"),
        }
        assert items[3].HasField("snapshot_end")
        assert items[3].snapshot_end.sequence == 9
        await server.append(callback(1, CAMPAIGN_A))
        [live] = await read_updates(call, 1)
        assert live.sequence == 10
        call.cancel()

    @pytest.mark.parametrize(
        "request_",
        [
            pb2.StreamStatusUpdatesRequest(include_snapshot=True, after_sequence=0),
            pb2.StreamStatusUpdatesRequest(after_sequence=5),
            pb2.StreamStatusUpdatesRequest(statuses=[pb.MESSAGE_STATUS_UNSPECIFIED]),
            pb2.StreamStatusUpdatesRequest(statuses=[42]),  # type: ignore[list-item]
        ],
    )
    async def test_invalid_requests(self, server: Server, request_: pb2.StreamStatusUpdatesRequest) -> None:
        """Contradictory or impossible requests are INVALID_ARGUMENT."""
        call = server.stub.StreamStatusUpdates(request_)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def test_resume_before_retention_is_out_of_range(self, server: Server) -> None:
        """A resume point older than what is kept is OUT_OF_RANGE, naming the oldest resume point."""
        for index in range(1, 4):
            await server.append(callback(index))
        assert await server.log.prune(PruneChunk(int((time.time() + 1) * 1_000_000))) == 3
        call = server.stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest(after_sequence=1))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "after_sequence=3" in (caught.value.details() or "")
        await server.append(callback(4))
        resumed = server.stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest(after_sequence=3))
        assert [u.sequence for u in await read_updates(resumed, 1)] == [4]
        resumed.cancel()

    async def test_status_filter(self, server: Server) -> None:
        """statuses limits the stream to those statuses."""
        call = server.stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest(statuses=[pb.MESSAGE_STATUS_FAILED]))
        await call.initial_metadata()
        await server.append(callback(1, name="Queued"))
        await server.append(callback(1, name="Failed"))
        [update] = await read_updates(call, 1)
        assert update.status == pb.MESSAGE_STATUS_FAILED
        call.cancel()

    async def test_shutdown_ends_streams_unavailable(self, server: Server) -> None:
        """Closing the broker ends open streams with UNAVAILABLE and the resume point."""
        call = server.stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest())
        await call.initial_metadata()
        await server.append(callback(1))
        await read_updates(call, 1)
        server.broker.close()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "after_sequence=1" in (caught.value.details() or "")


class TestSlowAndMany:
    """Slow subscribers, progress, limits."""

    async def test_slow_subscriber_catches_up_from_store(self, tmp_path: Path) -> None:
        """A subscriber that stops reading while another reads everything misses nothing once it reads again."""
        running = await start(tmp_path, queue_size=8)
        try:
            slow = running.stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest())
            fast = running.stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest())
            await slow.initial_metadata()
            await fast.initial_metadata()
            writer = asyncio.gather(*(running.append(callback(index)) for index in range(1, 3001)))
            fast_updates = await read_updates(fast, 3000)
            await writer  # Every update was offered to the slow one, which has read nothing: its queue overflowed.
            slow_updates = await read_updates(slow, 3000)
            assert [u.sequence for u in fast_updates] == list(range(1, 3001))
            assert [u.sequence for u in slow_updates] == list(range(1, 3001))
            assert (
                running.metrics.registry.get_sample_value("routee_callbacks_stream_catch_ups_total") >= 1
            )  # It really fell behind.
            slow.cancel()
            fast.cancel()
        finally:
            await running.stop()

    async def test_a_resumed_stream_counts_as_catching_up_until_it_reads_live(self, server: Server) -> None:
        """While a stream replays from the store the catching-up gauge counts it; once live, it does not."""
        await asyncio.gather(*(server.append(callback(index)) for index in range(1, 2001)))

        def catching_up() -> float | None:
            return server.metrics.registry.get_sample_value("routee_callbacks_streams_catching_up")

        def subscribers() -> float | None:
            return server.metrics.registry.get_sample_value("routee_callbacks_subscribers")

        assert catching_up() == 0
        call = server.stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest(after_sequence=0))
        seen = []
        for _ in range(2000):
            await read_updates(call, 1)
            seen.append(catching_up())
        assert max(seen) == 1
        await server.append(callback(2001))
        assert [update.sequence for update in await read_updates(call, 1)] == [2001]
        assert catching_up() == 0
        call.cancel()
        await eventually_async(lambda: subscribers() == 0, "the cancelled stream ended")  # Its clean-up is done.
        assert catching_up() == 0

    async def test_progress_when_idle(self, tmp_path: Path) -> None:
        """An idle stream gets progress items with the sequence it has covered."""
        running = await start(tmp_path, progress=0.1)
        try:
            await running.append(callback(1, campaign="other"))
            call = running.stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest(campaign_tracking_id="mine"))
            item = await asyncio.wait_for(call.read(), 5)
            assert item.HasField("progress")
            assert item.progress.sequence == 1
            call.cancel()
        finally:
            await running.stop()

    async def test_stream_limit(self, tmp_path: Path) -> None:
        """Past the stream limit a new stream gets RESOURCE_EXHAUSTED; closed streams free their place."""
        running = await start(tmp_path, max_streams=2)
        try:
            calls = [running.stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest()) for _ in range(2)]
            for call in calls:
                await call.initial_metadata()
            extra = running.stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest())
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await extra.read()
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            calls[0].cancel()
            await asyncio.sleep(0.2)
            assert running.broker.subscriber_count == 1
            again = running.stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest())
            await again.initial_metadata()
            again.cancel()
            calls[1].cancel()
        finally:
            await running.stop()

    async def test_one_client_cannot_take_every_stream(self, tmp_path: Path) -> None:
        """Past its own limit a client's next stream gets RESOURCE_EXHAUSTED while another client (another
        address) still opens one; the client's closed streams free its places, on any of its connections."""
        running = await start(tmp_path, max_streams=10, per_client=2)
        other = pb2_grpc.MessageStatusServiceStub(grpc.aio.insecure_channel(f"[::1]:{running.port}"))
        second_connection = pb2_grpc.MessageStatusServiceStub(grpc.aio.insecure_channel(f"127.0.0.1:{running.port}"))
        try:
            calls = [running.stub.StreamInboundMessages(pb2.StreamInboundMessagesRequest()) for _ in range(2)]
            for call in calls:
                await call.initial_metadata()
            for stub in (running.stub, second_connection):  # The same client, whatever the connection.
                extra = stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest())
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await extra.read()
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "this client (127.0.0.1) already has 2 streams open" in (caught.value.details() or "")
            elsewhere = other.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest())
            await elsewhere.initial_metadata()
            calls[0].cancel()
            await asyncio.sleep(0.2)
            again = second_connection.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest())
            await again.initial_metadata()
            for call in (again, elsewhere, calls[1]):
                call.cancel()
        finally:
            await running.stop()

    async def test_many_subscribers_each_get_everything(self, tmp_path: Path) -> None:
        """1 000 concurrent subscribers each receive every update."""
        running = await start(tmp_path, max_streams=1000)
        try:
            calls = [running.stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest()) for _ in range(1000)]
            await asyncio.gather(*(call.initial_metadata() for call in calls))
            assert running.broker.subscriber_count == 1000
            for index in range(1, 21):
                await running.append(callback(index))
            results = await asyncio.gather(*(read_updates(call, 20, seconds=60) for call in calls))
            assert all([u.sequence for u in updates] == list(range(1, 21)) for updates in results)
            for call in calls:
                call.cancel()
        finally:
            await running.stop()


async def read_inbound(call: grpc.aio.UnaryStreamCall, count: int, seconds: float = 10) -> list[pb.InboundMessage]:
    """Read items until ``count`` inbound messages arrived."""
    return await read_items(call, "inbound_message", count, seconds)


class TestInbound:
    """Replies: in GetMessageStatus, and on StreamInboundMessages (never on status streams)."""

    async def test_replies_are_joined_to_the_message_they_answer(self, server: Server) -> None:
        for body in fixture_bodies().values():
            await server.append(body)
        for body in inbound_bodies().values():
            await server.append_inbound(body)
        first = await server.stub.GetMessageStatus(
            pb2.GetMessageStatusRequest(tracking_id="a1b2c3d4-0000-4000-8000-000000000001")
        )
        assert [reply.text for reply in first.replies] == ["YES please, keep me posted", ""]
        assert first.replies[1].file_name == "receipt.jpg"
        assert first.replies[0].sequence < first.replies[1].sequence
        assert all(reply.receive_time.seconds > 0 for reply in first.replies)
        other = await server.stub.GetMessageStatus(
            pb2.GetMessageStatusRequest(tracking_id="a1b2c3d4-0000-4000-8000-000000000002")
        )
        assert list(other.replies) == []

    async def test_replies_are_listed_in_the_order_they_were_written(self, server: Server) -> None:
        """Replies delivered newest first are listed by ``sentDate``, oldest first, and by sequence where two
        share a time; in a batch with history too."""
        await server.append(callback(1))
        for text, sent in [("third", "10:03"), ("second", "10:02"), ("first", "10:01"), ("first too", "10:01")]:
            body = {
                "from": "+306900000001",
                "message": text,
                "sentDate": f"2024-05-01T{sent}:00Z",
                "referenceTrackingId": "m1",
            }
            await server.append_inbound(json.dumps(body).encode())
        expected = ["first", "first too", "second", "third"]
        single = await server.stub.GetMessageStatus(pb2.GetMessageStatusRequest(tracking_id="m1"))
        assert [reply.text for reply in single.replies] == expected
        batch = await server.stub.BatchGetMessageStatuses(
            pb2.BatchGetMessageStatusesRequest(tracking_ids=["m1"], include_history=True)
        )
        assert [reply.text for reply in batch.statuses[0].replies] == expected

    async def test_many_large_replies_keep_one_answer_small(self, server: Server) -> None:
        """300 replies of 8 KB to one message: GetMessageStatus carries the 100 received last and counts 300, so
        a default client reads it, alone or in a batch with history."""
        await server.append(callback(1))
        for number in range(300):
            body = {
                "from": "+306900000001",
                "message": f"{number:03d} " + "x" * 8000,
                "sentDate": f"2024-05-01T10:{number // 60:02d}:{number % 60:02d}Z",
                "referenceTrackingId": "m1",
            }
            await server.append_inbound(json.dumps(body).encode())
        answer = await server.stub.GetMessageStatus(pb2.GetMessageStatusRequest(tracking_id="m1"))
        assert (len(answer.replies), answer.total_replies, answer.total_events) == (100, 300, 1)
        assert [reply.text[:3] for reply in answer.replies] == [f"{n:03d}" for n in range(200, 300)]
        assert answer.ByteSize() < 2 << 20  # Each reply twice (text and raw_json): far under a client's 4 MiB.
        batch = await server.stub.BatchGetMessageStatuses(
            pb2.BatchGetMessageStatusesRequest(tracking_ids=["m1", "m2"], include_history=True)
        )
        assert [(status.tracking_id, status.total_replies) for status in batch.statuses] == [("m1", 300)]

    async def test_a_campaign_stream_replays_then_goes_live_without_status_updates(self, server: Server) -> None:
        bodies = inbound_bodies()
        await server.append_inbound(bodies["01-m1-reply-text.json"])
        await server.append(callback(1, campaign=CAMPAIGN_A))
        await server.append_inbound(bodies["03-m4-reply-other-campaign.json"])
        call = server.stub.StreamInboundMessages(
            pb2.StreamInboundMessagesRequest(campaign_tracking_id=CAMPAIGN_A, after_sequence=0)
        )
        (replayed,) = await read_inbound(call, 1)
        assert (replayed.sequence, replayed.text) == (1, "YES please, keep me posted")
        await server.append(callback(2, campaign=CAMPAIGN_A))
        await server.append_inbound(bodies["02-m1-reply-file.json"])
        (live,) = await read_inbound(call, 1)
        assert (live.sequence, live.file_name) == (5, "receipt.jpg")
        call.cancel()

    async def test_a_status_stream_carries_no_replies(self, server: Server) -> None:
        call = server.stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest(after_sequence=0))
        await server.append_inbound(inbound_bodies()["01-m1-reply-text.json"])
        await server.append(callback(1))
        (update,) = await read_updates(call, 1)
        assert (update.sequence, update.tracking_id) == (2, "m1")
        call.cancel()

    async def test_progress_and_resume_rules(self, tmp_path: Path) -> None:
        """An idle inbound stream gets progress items; resuming beyond the log is INVALID_ARGUMENT."""
        running = await start(tmp_path, progress=0.1)
        try:
            await running.append_inbound(inbound_bodies()["01-m1-reply-text.json"])
            call = running.stub.StreamInboundMessages(pb2.StreamInboundMessagesRequest())
            async with asyncio.timeout(5):
                item = await call.read()
            assert item.HasField("progress")
            assert item.progress.sequence == 1
            call.cancel()
            beyond = running.stub.StreamInboundMessages(pb2.StreamInboundMessagesRequest(after_sequence=5))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await beyond.read()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await running.stop()


class TestCampaignQuestions:
    """BatchGetMessageStatuses, ListMessageStatuses, GetCampaignSummary."""

    async def test_batch_get_keeps_the_order_and_reports_the_missing(self, server: Server) -> None:
        for index in range(5):
            await server.append(callback(index, campaign=CAMPAIGN_A))
        await server.append(callback(3, campaign=CAMPAIGN_A, name="Seen"))
        response = await server.stub.BatchGetMessageStatuses(
            pb2.BatchGetMessageStatusesRequest(tracking_ids=["m4", "x", "m3", "m0", "y"])
        )
        assert [status.tracking_id for status in response.statuses] == ["m4", "m3", "m0"]
        assert list(response.missing_tracking_ids) == ["x", "y"]
        assert response.statuses[1].status_name == "Seen"
        assert all(not status.events for status in response.statuses)
        full = await server.stub.BatchGetMessageStatuses(
            pb2.BatchGetMessageStatusesRequest(tracking_ids=["m3"], include_history=True)
        )
        assert [event.status_name for event in full.statuses[0].events] == ["Queued", "Seen"]

    @pytest.mark.parametrize(
        "ids", [[], ["a", "a"], ["a", ""], [f"m{n}" for n in range(1001)]], ids=["empty", "twice", "blank", "1001"]
    )
    async def test_batch_get_refuses_bad_requests(self, server: Server, ids: list[str]) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.stub.BatchGetMessageStatuses(pb2.BatchGetMessageStatusesRequest(tracking_ids=ids))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    @pytest.mark.parametrize(
        "make_id",
        [lambda n: str(uuid.UUID(int=n)), lambda n: f"{n:04d}".ljust(MAX_ID_LENGTH, "\u00e9")],
        ids=["uuids", "ids-at-the-bound"],
    )
    async def test_batch_get_takes_its_largest_request(self, server: Server, make_id: Callable[[int], str]) -> None:
        """The most ids of the longest accepted length (two bytes a character in UTF-8) fit one request; what
        is stored comes back, the rest is missing."""
        ids = [make_id(n) for n in range(MAX_BATCH_IDS)]
        for tracking_id in ids[:3]:
            body = {"trackingId": tracking_id, "status": {"name": "Queued", "updatedDate": "2024-05-01T10:00:00Z"}}
            await server.append(parse_callback(json.dumps(body).encode()).callback)
        response = await server.stub.BatchGetMessageStatuses(pb2.BatchGetMessageStatusesRequest(tracking_ids=ids))
        assert [status.tracking_id for status in response.statuses] == ids[:3]
        assert list(response.missing_tracking_ids) == ids[3:]

    async def test_an_id_longer_than_any_accepted_is_invalid(self, server: Server) -> None:
        """An id one character past the bound is INVALID_ARGUMENT, alone or in a batch; one at the bound is just
        not found."""
        too_long = "x" * (MAX_ID_LENGTH + 1)
        calls = [
            server.stub.GetMessageStatus(pb2.GetMessageStatusRequest(tracking_id=too_long)),
            server.stub.BatchGetMessageStatuses(pb2.BatchGetMessageStatusesRequest(tracking_ids=["m1", too_long])),
            server.stub.ListMessageStatuses(pb2.ListMessageStatusesRequest(campaign_tracking_id=too_long)),
            server.stub.GetCampaignSummary(pb2.GetCampaignSummaryRequest(campaign_tracking_id=too_long)),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"at most {MAX_ID_LENGTH} characters" in (caught.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await server.stub.GetMessageStatus(pb2.GetMessageStatusRequest(tracking_id="x" * MAX_ID_LENGTH))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_list_walks_every_page_once_with_filters_and_tokens(self, server: Server) -> None:
        for index in range(25):
            await server.append(callback(index, campaign=CAMPAIGN_A))
        for index in range(0, 25, 5):
            await server.append(callback(index, campaign=CAMPAIGN_A, name="Failed"))
        seen: list[str] = []
        token = ""
        while True:
            page = await server.stub.ListMessageStatuses(
                pb2.ListMessageStatusesRequest(campaign_tracking_id=CAMPAIGN_A, page_size=7, page_token=token)
            )
            seen += [message.tracking_id for message in page.messages]
            token = page.next_page_token
            if not token:
                break
        assert seen == sorted(f"m{index}" for index in range(25))
        failed = await server.stub.ListMessageStatuses(
            pb2.ListMessageStatusesRequest(campaign_tracking_id=CAMPAIGN_A, statuses=[pb.MESSAGE_STATUS_FAILED])
        )
        assert sorted(message.tracking_id for message in failed.messages) == sorted(f"m{n}" for n in range(0, 25, 5))
        assert failed.next_page_token == ""
        assert all(message.callback.status.name == "Failed" for message in failed.messages)
        first = await server.stub.ListMessageStatuses(
            pb2.ListMessageStatusesRequest(campaign_tracking_id=CAMPAIGN_A, page_size=3)
        )
        for wrong in (
            pb2.ListMessageStatusesRequest(campaign_tracking_id=CAMPAIGN_B, page_token=first.next_page_token),
            pb2.ListMessageStatusesRequest(
                campaign_tracking_id=CAMPAIGN_A, statuses=[pb.MESSAGE_STATUS_SEEN], page_token=first.next_page_token
            ),
            pb2.ListMessageStatusesRequest(campaign_tracking_id=CAMPAIGN_A, page_token="not-a-token"),
            pb2.ListMessageStatusesRequest(campaign_tracking_id=""),
            pb2.ListMessageStatusesRequest(campaign_tracking_id=CAMPAIGN_A, page_size=-1),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await server.stub.ListMessageStatuses(wrong)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def test_a_summary_and_a_stream_from_its_sequence_keep_exact_counts(self, server: Server) -> None:
        for index in range(6):
            await server.append(callback(index, campaign=CAMPAIGN_A))
        summary = await server.stub.GetCampaignSummary(pb2.GetCampaignSummaryRequest(campaign_tracking_id=CAMPAIGN_A))
        counts = {count.status: count.messages for count in summary.counts}
        assert (counts, summary.total_messages) == ({pb.MESSAGE_STATUS_QUEUED: 6}, 6)
        call = server.stub.StreamStatusUpdates(
            pb2.StreamStatusUpdatesRequest(campaign_tracking_id=CAMPAIGN_A, after_sequence=summary.sequence)
        )
        # All at the same instant as the Queued ones: later lifecycle ranks win; m6 is new.
        changes = [(0, "Delivered"), (1, "Failed"), (0, "Seen"), (6, "Queued"), (2, "Unsent")]
        for index, name in changes:
            await server.append(callback(index, campaign=CAMPAIGN_A, name=name))
        for update in await read_updates(call, len(changes)):
            if update.is_current:
                if update.previous_status:
                    counts[update.previous_status] -= 1
                counts[update.status] = counts.get(update.status, 0) + 1
        call.cancel()
        final = await server.stub.GetCampaignSummary(pb2.GetCampaignSummaryRequest(campaign_tracking_id=CAMPAIGN_A))
        assert {status: n for status, n in counts.items() if n} == {c.status: c.messages for c in final.counts}
        assert final.total_messages == 7
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await server.stub.GetCampaignSummary(pb2.GetCampaignSummaryRequest(campaign_tracking_id="nope"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
