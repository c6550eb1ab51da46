"""The in-process broker: filters, ordering, the full-queue policy and shutdown."""

from __future__ import annotations

import pytest

from routee.callbacks.v1 import callback_pb2 as pb
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from service.api.broker import Broker, Update
from service.domain.entries import EventFilter, StoredEvent
from service.domain.errors import ShuttingDownError


def event(sequence: int, campaign: str = "c1", status: int = pb.MESSAGE_STATUS_QUEUED) -> StoredEvent:
    """A stored event with a tiny callback."""
    payload = pb.ViberCallback(tracking_id=f"m{sequence}", campaign_tracking_id=campaign).SerializeToString()
    return StoredEvent(sequence, f"m{sequence}", campaign, status, "Queued", 1, 2, True, payload)


class TestBroker:
    """Publishing to subscriptions."""

    async def test_filters_by_campaign_and_status(self) -> None:
        """A subscription sees its campaign (or all) and its statuses only."""
        broker = Broker()
        every = broker.subscribe(EventFilter())
        campaign = broker.subscribe(EventFilter("c1"))
        failed = broker.subscribe(EventFilter(statuses=frozenset({pb.MESSAGE_STATUS_FAILED})))
        broker.publish([event(1, "c1"), event(2, "c2"), event(3, "", pb.MESSAGE_STATUS_FAILED)])
        assert [u.sequence for u in await every.next_batch(0.1) or []] == [1, 2, 3]
        assert [u.sequence for u in await campaign.next_batch(0.1) or []] == [1]
        assert [u.sequence for u in await failed.next_batch(0.1) or []] == [3]
        assert broker.last_sequence == 3

    async def test_idle_wait_returns_empty(self) -> None:
        """With nothing published, next_batch returns an empty batch after the idle time."""
        broker = Broker()
        assert await broker.subscribe(EventFilter()).next_batch(0.01) == []

    async def test_payload_is_serialized_once(self) -> None:
        """Every subscriber receives the same serialized update."""
        broker = Broker()
        first, second = broker.subscribe(EventFilter()), broker.subscribe(EventFilter("c1"))
        broker.publish([event(7)])
        [one] = await first.next_batch(0.1) or []
        [two] = await second.next_batch(0.1) or []
        assert one is two
        item = pb2.StreamStatusUpdatesResponse.FromString(one.payload)
        assert item.status_update.sequence == 7
        assert item.status_update.callback.tracking_id == "m7"

    async def test_full_queue_marks_lagged_without_blocking_others(self) -> None:
        """A subscriber past its queue size is told to catch up; the others keep everything."""
        broker = Broker(queue_size=3)
        slow, fast = broker.subscribe(EventFilter()), broker.subscribe(EventFilter())
        for sequence in range(1, 4):
            broker.publish([event(sequence)])
            assert len(await fast.next_batch(0.1) or []) == 1
        broker.publish([event(4)])
        assert await slow.next_batch(0.1) is None
        assert [u.sequence for u in await fast.next_batch(0.1) or []] == [4]

    async def test_unsubscribed_receive_nothing(self) -> None:
        """Removing a subscription stops delivery and empties the index."""
        broker = Broker()
        subscription = broker.subscribe(EventFilter("c1"))
        broker.unsubscribe(subscription)
        broker.unsubscribe(subscription)
        broker.publish([event(1)])
        assert broker.subscriber_count == 0
        assert await subscription.next_batch(0.01) == []

    async def test_start_sequence_is_last_published(self) -> None:
        """A subscription knows the last sequence published before it existed."""
        broker = Broker()
        broker.publish([event(5)])
        assert broker.subscribe(EventFilter()).start_sequence == 5

    async def test_close_ends_waiting_readers(self) -> None:
        """Closing the broker wakes readers with ShuttingDownError and refuses new subscribers."""
        broker = Broker()
        subscription = broker.subscribe(EventFilter("c1"))
        broker.close()
        with pytest.raises(ShuttingDownError):
            await subscription.next_batch(5)
        with pytest.raises(ShuttingDownError):
            broker.subscribe(EventFilter())


class TestUpdate:
    """What the broker fans out."""

    def test_the_stream_item_is_built_once_and_only_when_needed(self) -> None:
        """Routing needs no serialization; the first reader of the payload builds it, later readers share it."""
        update = Update(event(9, "c9", pb.MESSAGE_STATUS_SEEN))
        assert (update.sequence, update.campaign_tracking_id, update.status) == (9, "c9", pb.MESSAGE_STATUS_SEEN)
        assert update._payload is None
        assert update.payload is update.payload
