"""SMS in the store, on both engines: parts stored once each, the message's status from its parts, counts,
reads and filters by channel, inbound SMS by id."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from test_store import callback

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.entries import EventFilter, StoredEvent
from service.domain.rules import SMS, VIBER
from service.routee.sms import parse_sms, parse_sms_inbound
from service.store import AppendInbound, AppendStatus, Erase, Store, open_store
from support.fixtures import sms_bodies, sms_inbound_bodies

NOW_US = 1_700_000_000_000_000
QUEUED, SENT, DELIVERED = pb.MESSAGE_STATUS_QUEUED, pb.MESSAGE_STATUS_SENT, pb.MESSAGE_STATUS_DELIVERED
UNDELIVERED, FAILED = pb.MESSAGE_STATUS_UNDELIVERED, pb.MESSAGE_STATUS_FAILED
S1 = "5e1f0000-0000-4000-8000-000000000001"
S2 = "5e1f0000-0000-4000-8000-000000000002"
CAMPAIGN = "c0ffee00-0000-4000-8000-0000000000a1"


@pytest.fixture
async def store(database: str) -> AsyncIterator[Store]:
    store = open_store(database)
    store.open()
    yield store
    await store.close()


async def post(store: Store, *names: str) -> list[StoredEvent | None]:
    """Store fixture reports, each in a transaction of its own (as they arrive one by one)."""
    results: list[StoredEvent | None] = []
    for name in names:
        written = await store.write([AppendStatus(parse_sms(sms_bodies()[name]).callback)], NOW_US)
        results.append(written.results[0])
    return results


class TestMultipart:
    """A 3-part SMS whose parts arrive out of order and twice."""

    async def test_each_part_event_is_stored_once_and_the_message_has_one_status(self, store: Store) -> None:
        results = await post(
            store,
            "02-s1-part1-delivered.json",
            "01-s1-part2-sent.json",
            "02-s1-part1-delivered.json",  # Routee's retry
            "03-s1-part3-delivered.json",
            "04-s1-part2-delivered.json",
            "01-s1-part2-sent.json",
        )
        assert [result is None for result in results] == [False, False, True, False, False, True]
        kept = [result for result in results if result is not None]
        assert [(e.part, e.message_status, e.is_current) for e in kept] == [
            (1, QUEUED, True),
            (2, QUEUED, False),
            (3, SENT, True),
            (2, DELIVERED, True),
        ]
        state = await store.message(S1)
        assert state is not None
        assert (state.current.channel, state.current.message_status, state.current.sequence) == (
            SMS,
            DELIVERED,
            kept[-1].sequence,
        )
        assert [(part.part, part.status) for part in state.parts] == [(1, DELIVERED), (2, DELIVERED), (3, DELIVERED)]
        assert state.events_total == 4
        summary = await store.campaign_summary(CAMPAIGN)
        assert summary is not None
        assert summary.counts == {DELIVERED: 1}

    async def test_one_part_undelivered_fails_the_message_and_the_counts_follow(self, store: Store) -> None:
        await post(store, "05-s2-part1-delivered.json")
        summary = await store.campaign_summary(CAMPAIGN)
        assert summary is not None
        assert summary.counts == {QUEUED: 1}
        await post(store, "06-s2-part2-undelivered-on-handset.json")
        state = (await store.statuses([S2], history=True))[S2]
        assert state.current.message_status == UNDELIVERED
        assert [(part.part, part.status) for part in state.parts] == [(1, DELIVERED), (2, UNDELIVERED)]
        summary = await store.campaign_summary(CAMPAIGN)
        assert summary is not None
        assert summary.counts == {UNDELIVERED: 1}
        listed = await store.list_messages(CAMPAIGN, frozenset({UNDELIVERED}), "", 10)
        assert [event.tracking_id for event in listed] == [S2]


class TestChannels:
    """Viber and SMS side by side in one campaign."""

    async def test_reads_filter_by_channel(self, store: Store) -> None:
        await store.write([AppendStatus(callback("v1", "Delivered", "2024-05-01T10:00:00Z", CAMPAIGN))], NOW_US)
        await post(store, "05-s2-part1-delivered.json", "06-s2-part2-undelivered-on-handset.json")
        sms_only = EventFilter(CAMPAIGN, channels=frozenset({SMS}))
        assert {e.channel for e in await store.events_after(0, sms_only, 10)} == {SMS}
        viber_only = EventFilter(CAMPAIGN, channels=frozenset({VIBER}))
        assert [e.tracking_id for e in await store.events_after(0, viber_only, 10)] == ["v1"]
        listed = await store.list_messages(CAMPAIGN, frozenset(), "", 10, frozenset({SMS}))
        assert [event.tracking_id for event in listed] == [S2]
        snapshot = await store.snapshot_page(EventFilter(CAMPAIGN), await store.last_sequence(), "", 10)
        assert {(e.tracking_id, e.message_status) for e in snapshot} == {("v1", DELIVERED), (S2, UNDELIVERED)}
        summary = await store.campaign_summary(CAMPAIGN)
        assert summary is not None
        assert summary.counts == {DELIVERED: 1, UNDELIVERED: 1}


class TestInboundSms:
    """Inbound SMS are entries of the log, one per messageId."""

    async def test_an_inbound_sms_is_stored_once_per_id(self, store: Store) -> None:
        message = parse_sms_inbound(sms_inbound_bodies()["01-mo-stop.json"]).message
        first = (await store.write([AppendInbound(message)], NOW_US)).results[0]
        again = (await store.write([AppendInbound(message)], NOW_US)).results[0]
        assert first is not None
        assert again is None
        entries = await store.events_after(0, EventFilter(inbound=True, channels=frozenset({SMS})), 10)
        assert [entry.sequence for entry in entries] == [first.sequence]
        assert await store.events_after(0, EventFilter(inbound=True, channels=frozenset({VIBER})), 10) == []


class TestErasure:
    async def test_forget_erases_an_sms_recipient(self, store: Store) -> None:
        await post(store, "05-s2-part1-delivered.json")
        erased = await store.write([Erase("+306900000102")], NOW_US)
        assert erased.results[0].callbacks == 1
        state = await store.message(S2)
        assert state is not None
        kept = pb.SmsCallback.FromString(state.current.callback)
        assert kept.recipient == ""
        assert "+306900000102" not in kept.raw_json
        assert kept.message_id == S2
