"""The store contract, on every engine: distinct events, sequences in commit order, the current-status rule,
duplicates, reads, retention. The same tests run against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.entries import EventFilter, StoredEvent, StoredInbound
from service.domain.errors import StoreUnavailableError
from service.domain.rules import INBOUND, STATUS
from service.routee.callbacks import parse_callback, parse_inbound
from service.store import (
    QUARANTINE_ENTRY_BYTES,
    AppendInbound,
    AppendStatus,
    DropQuarantined,
    Probe,
    PruneChunk,
    Quarantine,
    Release,
    Store,
    is_postgres,
    open_store,
    quarantine_cost,
)
from service.store import postgres as postgres_engine
from service.store import sqlite as sqlite_engine
from service.store.postgres import READ_STATEMENT_TIMEOUT_MS
from service.store.schema import MIGRATIONS
from service.store.sql import snapshot_page
from support.fixtures import fixture_bodies
from support.postgres import PostgresServer

NOW_US = 1_700_000_000_000_000


def callback(tracking_id: str, name: str, date: str, campaign: str = "c1") -> pb.ViberCallback:
    """A minimal callback."""
    return parse_callback(
        f'{{"trackingId": "{tracking_id}", "campaignTrackingId": "{campaign}",'
        f' "status": {{"name": "{name}", "updatedDate": "{date}"}}}}'.encode()
    ).callback


def reply(reference: str, text: str, sent: str = "2024-05-01T10:01:00Z", campaign: str = "c1") -> pb.InboundMessage:
    """A minimal inbound message answering ``reference``."""
    return parse_inbound(
        f'{{"from": "+306900000000", "to": "sender", "message": "{text}", "sentDate": "{sent}",'
        f' "campaignTrackingId": "{campaign}", "referenceTrackingId": "{reference}"}}'.encode()
    ).message


async def write(store: Store, *callbacks: pb.ViberCallback, now_us: int = NOW_US) -> list[StoredEvent | None]:
    """Append callbacks in one transaction; return each one's event (None for a duplicate)."""
    results: list[StoredEvent | None] = (await store.write([AppendStatus(c) for c in callbacks], now_us)).results
    return results


@pytest.fixture
async def store(database: str) -> AsyncIterator[Store]:
    store = open_store(database)
    store.open()
    yield store
    await store.close()


class TestAppend:
    """Appending callbacks."""

    async def test_sequences_increase_and_duplicates_are_recognised(self, store: Store) -> None:
        """Each distinct event gets the next sequence; the same event again, in any case, is a duplicate."""
        first, second = await write(
            store, callback("m1", "Queued", "2024-05-01T10:00:00Z"), callback("m1", "Delivered", "2024-05-01T10:00:05Z")
        )
        again = await write(store, callback("m1", "DELIVERED", "2024-05-01T10:00:05.000Z"))
        assert first is not None
        assert second is not None
        assert (first.sequence, second.sequence) == (1, 2)
        assert again == [None]
        assert await store.head() == 2
        assert await store.last_sequence() == 2

    async def test_a_duplicate_within_one_batch_is_stored_once(self, store: Store) -> None:
        """The same event twice in one transaction: the first is kept, the second is a duplicate."""
        results = await write(
            store, callback("m1", "Seen", "2024-05-01T10:00:00Z"), callback("m1", "seen", "2024-05-01T10:00:00Z")
        )
        assert results[0] is not None
        assert results[1] is None
        assert len(await store.history("m1")) == 1

    async def test_same_name_other_instant_is_distinct(self, store: Store) -> None:
        """Queued can reappear after a failed attempt: another instant is another event."""
        await write(store, callback("m1", "Queued", "2024-05-01T10:00:00Z"))
        await write(store, callback("m1", "Queued", "2024-05-01T10:05:00Z"))
        assert len(await store.history("m1")) == 2

    async def test_write_returns_committed_entries_in_sequence_order(self, store: Store) -> None:
        """The entries of a transaction come back in sequence order, ready to publish."""
        result = await store.write(
            [AppendStatus(callback(f"m{index}", "Queued", "2024-05-01T10:00:00Z")) for index in range(300)], NOW_US
        )
        assert [entry.sequence for entry in result.entries] == list(range(1, 301))
        assert [event.sequence for event in await store.entries_after(250, 10)] == list(range(251, 261))

    async def test_other_jobs_share_the_transaction(self, store: Store) -> None:
        """A probe and a prune ride along with appends; each job gets its own result."""
        result = await store.write(
            [Probe(), AppendStatus(callback("m1", "Queued", "2024-05-01T10:00:00Z")), PruneChunk(0)], NOW_US
        )
        assert result.results[0] is None
        assert isinstance(result.results[1], StoredEvent)
        assert result.results[2] == 0

    async def test_a_failed_transaction_keeps_nothing(self, store: Store) -> None:
        """A transaction that fails after its appends leaves no trace: not the event, not the sequence."""
        unknown = object()  # An engine refuses a job it does not know, after the appends ran.
        with pytest.raises(TypeError, match="no such job"):
            await store.write([AppendStatus(callback("m1", "Queued", "2024-05-01T10:00:00Z")), unknown], NOW_US)  # type: ignore[list-item]
        assert await store.history("m1") == []
        assert await store.head() == 0
        assert (await write(store, callback("m1", "Queued", "2024-05-01T10:00:00Z")))[0] is not None
        assert await store.head() == 1


class TestCurrentStatus:
    """The decided rule: latest updatedDate, then lifecycle rank, then the later stored."""

    async def current(self, store: Store, tracking_id: str) -> StoredEvent:
        return (await store.history(tracking_id))[-1]

    async def test_late_older_event_does_not_move_current_back(self, store: Store) -> None:
        """A Delivered that arrives after Seen goes into history but is not current."""
        await write(store, callback("m1", "Seen", "2024-05-01T10:02:00Z"))
        (late,) = await write(store, callback("m1", "Delivered", "2024-05-01T10:01:00Z"))
        assert late is not None
        assert not late.is_current
        assert (await self.current(store, "m1")).status_name == "Seen"
        assert [event.status_name for event in await store.history("m1")] == ["Delivered", "Seen"]

    async def test_expired_after_delivered_is_current(self, store: Store) -> None:
        """Expire-on-delivery: Expired later than Delivered becomes current."""
        await write(store, callback("m1", "Delivered", "2024-05-01T10:01:00Z"))
        (expired,) = await write(store, callback("m1", "Expired", "2024-05-01T10:01:30Z"))
        assert expired is not None
        assert expired.is_current
        assert (await self.current(store, "m1")).status == pb.MESSAGE_STATUS_EXPIRED

    @pytest.mark.parametrize(
        ("names", "winner"),
        [
            (["Seen", "Delivered"], "Seen"),
            (["Delivered", "Queued"], "Delivered"),
            (["Failed", "Delivered"], "Failed"),
            (["Whatever", "Queued"], "Queued"),
            (["Expired", "Undelivered"], "Undelivered"),  # Equal rank: the later stored wins.
            (["Undelivered", "Expired"], "Expired"),
        ],
    )
    async def test_equal_dates_use_rank_then_storage_order(self, store: Store, names: list[str], winner: str) -> None:
        """On equal updatedDate the higher lifecycle rank wins; on equal rank too, the one stored later."""
        for name in names:
            await write(store, callback("m1", name, "2024-05-01T10:00:00Z"))
        assert (await self.current(store, "m1")).status_name == winner

    async def test_the_rule_holds_within_one_batch(self, store: Store) -> None:
        """Several events of one message in one transaction: the same winner as one at a time."""
        await write(
            store,
            callback("m1", "Seen", "2024-05-01T10:02:00Z"),
            callback("m1", "Queued", "2024-05-01T10:00:00Z"),
            callback("m1", "Delivered", "2024-05-01T10:02:00Z"),
        )
        assert (await self.current(store, "m1")).status_name == "Seen"

    async def test_any_order_gives_the_same_state(self, store: Store) -> None:
        """All fixtures, shuffled and three times over, in batches of any size: the same current statuses."""
        bodies = list(fixture_bodies().values()) * 3
        random.Random(7).shuffle(bodies)
        rng = random.Random(11)
        while bodies:
            size = rng.randint(1, 5)
            await write(store, *(parse_callback(body).callback for body in bodies[:size]))
            bodies = bodies[size:]
        state = {}
        for index in range(1, 6):
            history = await store.history(f"a1b2c3d4-0000-4000-8000-00000000000{index}")
            state[index] = (history[-1].status_name, len(history))
        assert await store.head() == len(fixture_bodies())
        assert state == {1: ("Seen", 3), 2: ("Failed", 2), 3: ("Expired", 2), 4: ("Undelivered", 1), 5: ("Unsent", 1)}


class TestReads:
    """Replay and snapshot reads."""

    async def test_events_after_filters_and_pages(self, store: Store) -> None:
        """events_after returns what follows a sequence, for one campaign or all, a page at a time."""
        for index in range(10):
            await write(store, callback(f"m{index}", "Queued", "2024-05-01T10:00:00Z", campaign=f"c{index % 2}"))
        every = await store.events_after(0, EventFilter(), 100)
        assert [event.sequence for event in every] == list(range(1, 11))
        campaign = await store.events_after(2, EventFilter("c0"), 3)
        assert [event.sequence for event in campaign] == [3, 5, 7]
        failed = await store.events_after(0, EventFilter(statuses=frozenset({pb.MESSAGE_STATUS_FAILED})), 100)
        assert failed == []
        queued = await store.events_after(8, EventFilter(statuses=frozenset({pb.MESSAGE_STATUS_QUEUED})), 100)
        assert [event.sequence for event in queued] == [9, 10]

    async def test_events_keep_every_field(self, store: Store) -> None:
        """What is read back is what was written, callback bytes included."""
        original = parse_callback(fixture_bodies()["06-m3-delivered-file.json"]).callback
        (written,) = await write(store, original)
        (read,) = await store.events_after(0, EventFilter(), 10)
        assert read == written
        assert pb.ViberCallback.FromString(read.callback) == original

    async def test_snapshot_is_current_status_of_each_message(self, store: Store) -> None:
        """A snapshot holds each message's current event and the last sequence it covers."""
        await write(store, callback("m1", "Queued", "2024-05-01T10:00:00Z"))
        await write(store, callback("m1", "Seen", "2024-05-01T10:02:00Z"))
        await write(store, callback("m1", "Delivered", "2024-05-01T10:01:00Z"))  # late, not current
        await write(store, callback("m2", "Queued", "2024-05-01T10:00:00Z", campaign="other"))
        events = await store.snapshot_page(EventFilter("c1"), await store.last_sequence(), "", 100)
        assert [(event.tracking_id, event.status_name) for event in events] == [("m1", "Seen")]
        assert all(event.is_current for event in events)

    async def test_a_snapshot_is_as_of_its_sequence_and_pages_by_tracking_id(self, store: Store) -> None:
        """Pages follow tracking ids; each message is as it was at the snapshot's sequence (a later change, or a
        message that came later, is not in it: the live updates after that sequence bring them)."""
        for number in range(7):
            await write(store, callback(f"m{number}", "Queued", "2024-05-01T10:00:00Z"))  # 1..7
        as_of = await store.last_sequence()
        await write(store, callback("m2", "Delivered", "2024-05-01T10:01:00Z"))  # 8: after the snapshot's sequence
        await write(store, callback("m9", "Queued", "2024-05-01T10:00:00Z"))  # 9: a message of later
        pages: list[list[StoredEvent]] = []
        after = ""
        while page := await store.snapshot_page(EventFilter("c1"), as_of, after, 3):
            pages.append(page)
            after = page[-1].tracking_id
        assert [[event.tracking_id for event in page] for page in pages] == [
            ["m0", "m1", "m2"],
            ["m3", "m4", "m5"],
            ["m6"],
        ]
        assert [(event.tracking_id, event.status_name, event.sequence) for event in pages[0]][2] == ("m2", "Queued", 3)
        queued = await store.snapshot_page(
            EventFilter(None, frozenset({pb.MESSAGE_STATUS_DELIVERED})), await store.last_sequence(), "", 10
        )
        assert [event.tracking_id for event in queued] == ["m2"]


class TestRetention:
    """Pruning old events."""

    async def test_prune_deletes_old_events_and_repairs_current(self, store: Store) -> None:
        """Events received before the cutoff go; a message keeps its best remaining event as current."""
        await write(store, callback("old", "Queued", "2024-05-01T10:00:00Z"), now_us=1000)  # 1
        await write(store, callback("m1", "Seen", "2024-05-01T10:02:00Z"), now_us=1000)  # 2, current of m1
        await write(store, callback("m1", "Delivered", "2024-05-01T10:01:00Z"), now_us=2000)  # 3, late
        await write(store, callback("new", "Queued", "2024-05-01T10:00:00Z"), now_us=2000)  # 4
        assert (await store.write([PruneChunk(1500, 1)], NOW_US)).results == [1]
        assert (await store.write([PruneChunk(1500, 5)], NOW_US)).results == [1]
        assert (await store.write([PruneChunk(1500, 5)], NOW_US)).results == [0]
        assert await store.pruned_through() == 2
        assert await store.history("old") == []
        assert [event.sequence for event in await store.history("m1")] == [3]
        snapshot = await store.snapshot_page(EventFilter(), await store.last_sequence(), "", 10)
        assert sorted(event.sequence for event in snapshot) == [3, 4]
        # Forgotten after retention: the same event again is stored anew (the window is >= 48 h).
        (again,) = await write(store, callback("old", "Queued", "2024-05-01T10:00:00Z"))
        assert again is not None
        assert again.sequence == 5, "a sequence is never reused"


class TestInbound:
    """Inbound messages: entries of the same log, recognised by their content, joined to the message answered."""

    async def test_replies_take_sequences_from_the_log_and_retries_are_duplicates(self, store: Store) -> None:
        result = await store.write(
            [
                AppendStatus(callback("m1", "Queued", "2024-05-01T10:00:00Z")),
                AppendInbound(reply("m1", "yes")),
                AppendInbound(reply("m1", "yes")),  # Posted twice in one batch.
                AppendInbound(reply("m1", "no", sent="2024-05-01T10:02:00Z")),
            ],
            NOW_US,
        )
        event, first, again, second = result.results
        assert isinstance(event, StoredEvent)
        assert isinstance(first, StoredInbound)
        assert isinstance(second, StoredInbound)
        assert (event.sequence, first.sequence, again, second.sequence) == (1, 2, None, 3)
        assert [entry.sequence for entry in result.entries] == [1, 2, 3]
        retried = await store.write([AppendInbound(reply("m1", "yes"))], NOW_US + 1)
        assert retried.results == [None]
        assert retried.entries == []
        assert await store.head() == 3

    async def test_a_reply_keeps_every_field_with_its_sequence_and_receive_time(self, store: Store) -> None:
        message = reply("m1", "ja, gerne \u00e9")
        (entry,) = (await store.write([AppendInbound(message)], NOW_US)).results
        (stored,) = await store.replies("m1")
        assert stored == entry
        decoded = pb.InboundMessage.FromString(stored.message)
        assert decoded.sequence == 1
        assert decoded.receive_time.ToMicroseconds() == NOW_US
        decoded.ClearField("sequence")
        decoded.ClearField("receive_time")
        assert decoded == message

    async def test_reads_by_message_by_campaign_and_of_the_whole_log(self, store: Store) -> None:
        await write(store, callback("m1", "Queued", "2024-05-01T10:00:00Z"))  # 1
        await store.write([AppendInbound(reply("m1", "a"))], NOW_US)  # 2
        await store.write([AppendInbound(reply("m2", "b", campaign="c2"))], NOW_US)  # 3
        await write(store, callback("m1", "Seen", "2024-05-01T10:00:09Z"))  # 4
        await store.write([AppendInbound(reply("m1", "c", sent="2024-05-01T10:09:00Z"))], NOW_US)  # 5
        assert [entry.sequence for entry in await store.replies("m1")] == [2, 5]
        assert await store.replies("nobody") == []
        state = await store.message("m1")
        assert state is not None
        assert (state.current.sequence, [event.sequence for event in state.history]) == (4, [1, 4])
        assert state.replies == await store.replies("m1")
        assert await store.message("m2") is None, "replies alone do not make a message known"
        inbound_c1 = await store.events_after(0, EventFilter("c1", inbound=True), 10)
        assert [entry.sequence for entry in inbound_c1] == [2, 5]
        assert [entry.sequence for entry in await store.events_after(2, EventFilter(inbound=True), 10)] == [3, 5]
        assert [entry.sequence for entry in await store.events_after(0, EventFilter(), 10)] == [1, 4]
        log = await store.entries_after(0, 10)
        assert [(entry.sequence, type(entry).__name__) for entry in log] == [
            (1, "StoredEvent"),
            (2, "StoredInbound"),
            (3, "StoredInbound"),
            (4, "StoredEvent"),
            (5, "StoredInbound"),
        ]
        assert [entry.sequence for entry in await store.entries_after(1, 2)] == [2, 3]
        assert [entry.sequence for entry in await store.entries_after(3, 1)] == [4]

    async def test_retention_prunes_replies_too(self, store: Store) -> None:
        await store.write([AppendInbound(reply("m1", "old"))], 1000)
        await write(store, callback("m1", "Queued", "2024-05-01T10:00:00Z"), now_us=1000)
        await store.write([AppendInbound(reply("m1", "new"))], 5000)
        assert (await store.write([PruneChunk(2000)], NOW_US)).results == [2]
        assert await store.pruned_through() == 2
        assert [pb.InboundMessage.FromString(entry.message).text for entry in await store.replies("m1")] == ["new"]

    async def test_a_quarantined_reply_is_released_as_a_reply(self, store: Store) -> None:
        (held,) = (await store.write([quarantine(b"{}", kind=INBOUND)], 1000)).results
        assert [item.kind for item in await store.quarantined()] == [INBOUND]
        result = await store.write([Release(held, AppendInbound(reply("m1", "late")))], 2000)
        assert isinstance(result.results[0], StoredInbound)
        assert await store.quarantined() == []
        assert len(await store.replies("m1")) == 1


class TestCampaigns:
    """Campaign questions: counts kept as events are stored, lists keyed by tracking id, batch reads."""

    async def test_counts_follow_current_statuses_through_late_events_duplicates_and_pruning(
        self, store: Store
    ) -> None:
        await write(
            store,
            callback("m1", "Queued", "2024-05-01T10:00:00Z"),
            callback("m2", "Queued", "2024-05-01T10:00:00Z"),
            callback("m3", "Failed", "2024-05-01T10:00:00Z"),
            now_us=1000,
        )
        await write(store, callback("m1", "Delivered", "2024-05-01T10:00:05Z"), now_us=2000)
        await write(
            store,
            callback("m1", "Queued", "2024-05-01T09:59:00Z"),  # Late: history only.
            callback("m2", "Queued", "2024-05-01T10:00:00Z"),  # A duplicate.
            callback("m2", "Seen", "2024-05-01T10:01:00Z"),
            callback("x", "Seen", "2024-05-01T10:01:00Z", campaign="c2"),
            now_us=3000,
        )
        summary = await store.campaign_summary("c1")
        assert summary is not None
        assert summary.counts == {
            pb.MESSAGE_STATUS_DELIVERED: 1,
            pb.MESSAGE_STATUS_SEEN: 1,
            pb.MESSAGE_STATUS_FAILED: 1,
        }
        assert (summary.first_update_us, summary.latest_update_us) == (1_714_557_540_000_000, 1_714_557_660_000_000)
        assert summary.sequence == await store.head()
        assert await store.campaign_summary("nobody") is None
        # Retention takes m3 whole (it is forgotten) and m1's Queued events: the counts follow.
        while (await store.write([PruneChunk(1500)], NOW_US)).results[0]:
            pass
        summary = await store.campaign_summary("c1")
        assert summary is not None
        assert summary.counts == {pb.MESSAGE_STATUS_DELIVERED: 1, pb.MESSAGE_STATUS_SEEN: 1}

    async def test_list_pages_by_tracking_id_with_a_status_filter(self, store: Store) -> None:
        await write(store, *(callback(f"m{n:02d}", "Queued", "2024-05-01T10:00:00Z") for n in range(10)))
        await write(store, *(callback(f"m{n:02d}", "Delivered", "2024-05-01T10:00:05Z") for n in range(0, 10, 3)))
        first = await store.list_messages("c1", frozenset(), "", 4)
        assert [event.tracking_id for event in first] == ["m00", "m01", "m02", "m03"]
        assert first[0].status_name == "Delivered", "each message with its current status"
        rest = await store.list_messages("c1", frozenset(), "m03", 100)
        assert [event.tracking_id for event in rest] == [f"m{n:02d}" for n in range(4, 10)]
        delivered = await store.list_messages("c1", frozenset({pb.MESSAGE_STATUS_DELIVERED}), "m00", 100)
        assert [event.tracking_id for event in delivered] == ["m03", "m06", "m09"]
        assert await store.list_messages("c2", frozenset(), "", 10) == []

    async def test_statuses_of_many_with_and_without_history(self, store: Store) -> None:
        await write(
            store, callback("a", "Queued", "2024-05-01T10:00:00Z"), callback("b", "Seen", "2024-05-01T10:00:00Z")
        )
        await write(store, callback("a", "Delivered", "2024-05-01T10:00:01Z"))
        await store.write([AppendInbound(reply("a", "hi"))], NOW_US)
        plain = await store.statuses(["b", "nobody", "a"])
        assert sorted(plain) == ["a", "b"]
        assert plain["a"].current.status_name == "Delivered"
        assert (plain["a"].history, plain["a"].replies) == ([], [])
        full = await store.statuses(["a", "b"], history=True)
        assert [event.status_name for event in full["a"].history] == ["Queued", "Delivered"]
        assert [pb.InboundMessage.FromString(r.message).text for r in full["a"].replies] == ["hi"]
        assert [event.status_name for event in full["b"].history] == ["Seen"]


class TestUpgrade:
    """A database made by the version before campaign questions is upgraded in place on open."""

    async def test_counts_and_statuses_are_filled_in_from_what_is_stored(
        self, database: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        events = [  # (sequence, tracking id, status, name, rank, update_us, current)
            (1, "m1", pb.MESSAGE_STATUS_QUEUED, "Queued", 1, 1_000_000, False),
            (2, "m1", pb.MESSAGE_STATUS_DELIVERED, "Delivered", 2, 2_000_000, True),
            (3, "m2", pb.MESSAGE_STATUS_FAILED, "Failed", 3, 3_000_000, True),
        ]
        _make_old_database(database, events)
        store = open_store(database)
        with caplog.at_level(logging.INFO):
            store.open()
        assert [record.message for record in caplog.records] == ["schema upgraded"], "an operator sees it"
        caplog.clear()
        again = open_store(database)
        again.open()
        await again.close()
        assert caplog.records == [], "an up-to-date schema is left alone"
        try:
            summary = await store.campaign_summary("c1")
            assert summary is not None
            assert summary.counts == {pb.MESSAGE_STATUS_DELIVERED: 1, pb.MESSAGE_STATUS_FAILED: 1}
            assert (summary.first_update_us, summary.latest_update_us, summary.sequence) == (1_000_000, 3_000_000, 3)
            listed = await store.list_messages("c1", frozenset({pb.MESSAGE_STATUS_FAILED}), "", 10)
            assert [event.tracking_id for event in listed] == ["m2"]
            (new,) = await write(store, callback("m2", "Seen", "2024-05-01T10:00:00Z"))
            assert new is not None
            assert (new.sequence, new.previous_status) == (4, pb.MESSAGE_STATUS_FAILED)
        finally:
            await store.close()

    @pytest.mark.parametrize("legacy_version", [6, 5])
    async def test_a_postgres_database_numbered_before_one_list_keeps_its_version(
        self, postgres: PostgresServer, caplog: pytest.LogCaptureFixture, legacy_version: int
    ) -> None:
        """PostgreSQL databases made while each engine kept its own migrations numbered them one lower (their
        first script made the log's head too): such a database is read at its version, not migrated again."""
        database = postgres.create_database()
        with psycopg.connect(database, autocommit=True) as connection:
            postgres_engine.migrate(connection, MIGRATIONS[: legacy_version + 1])
            connection.execute("DROP TABLE schema_migrations")
            connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            connection.execute("INSERT INTO schema_version SELECT generate_series(1, %s)", (legacy_version,))
        store = open_store(database)
        with caplog.at_level(logging.INFO):
            store.open()
        try:
            upgrades = [record for record in caplog.records if record.message == "schema upgraded"]
            # Upgraded from the version it is at (an earlier script run again would fail: its columns exist).
            assert [(record.from_version, record.to_version) for record in upgrades] == [  # type: ignore[attr-defined]
                (legacy_version + 1, len(MIGRATIONS))
            ]
            (event,) = await write(store, callback("m1", "Queued", "2024-05-01T10:00:00Z"))
            assert event is not None
            assert event.sequence == 1
        finally:
            await store.close()


def _before_campaigns() -> tuple[str, ...]:
    return MIGRATIONS[: next(index for index, script in enumerate(MIGRATIONS) if "campaign_counts" in script)]


def _make_old_database(database: str, events: list[tuple[int, str, int, str, int, int, bool]]) -> None:
    """The schema before campaign questions, holding ``events`` of campaign c1 as that version stored them."""
    rows = [
        (sequence, tracking_id, "c1", name.lower(), status, name, rank, update_us, update_us, current, b"")
        for sequence, tracking_id, status, name, rank, update_us, current in events
    ]
    messages = [(row[1], "c1", row[0], row[7], row[6]) for row in rows if row[9]]
    if is_postgres(database):
        with psycopg.connect(database, autocommit=True) as connection:
            postgres_engine.migrate(connection, _before_campaigns())
            with connection.cursor() as cursor:
                cursor.executemany(f"INSERT INTO events VALUES ({', '.join(['%s'] * 11)})", rows)
                cursor.executemany("INSERT INTO messages VALUES (%s, %s, %s, %s, %s)", messages)
                cursor.execute("UPDATE meta SET value = %s WHERE key = 'last_sequence'", (len(rows),))
        return
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        sqlite_engine.migrate(connection, _before_campaigns())
        connection.executemany(f"INSERT INTO events VALUES ({', '.join('?' * 11)})", rows)
        connection.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?)", messages)
        connection.execute("UPDATE meta SET value = ? WHERE key = 'last_sequence'", (len(rows),))
    finally:
        connection.close()


class TestCommitOrder:
    """Sequences become visible in commit order, whoever writes: a follower never skips one."""

    def test_concurrent_writers_never_let_a_follower_skip(self, database: str) -> None:
        """Four writers with their own connections (and threads) commit batches of any size at once while a
        follower reads after its last seen sequence: it sees every sequence, 1 to the end, with no gap and none
        twice."""
        setup = open_store(database)
        setup.open()
        errors: list[BaseException] = []

        async def writer(number: int) -> None:
            store = open_store(database)
            rng = random.Random(number)
            try:
                for batch in range(150):
                    size = rng.randint(1, 20)
                    jobs: list[AppendStatus | AppendInbound] = [
                        AppendStatus(callback(f"w{number}-{batch}-{i}", "Queued", "2024-05-01T10:00:00Z"))
                        for i in range(size)
                    ]
                    if batch % 3 == 0:  # Replies take their sequences from the same log.
                        jobs.append(AppendInbound(reply(f"w{number}-{batch}-0", f"yes {number} {batch}")))
                    for _ in range(50):  # SQLite may report a busy lock under this load: the writer retries.
                        try:
                            await store.write(jobs, NOW_US)
                            break
                        except StoreUnavailableError:
                            await asyncio.sleep(0.01)
            except BaseException as ex:
                errors.append(ex)
            finally:
                await store.close()

        async def follow(writers: list[threading.Thread]) -> tuple[list[int], int, int]:
            follower = open_store(database)
            seen: list[int] = []
            reads_while_writing = 0
            deadline = time.monotonic() + 60
            while any(thread.is_alive() for thread in writers) and time.monotonic() < deadline:
                page = await follower.entries_after(seen[-1] if seen else 0, 1000)
                reads_while_writing += bool(page)
                seen.extend(entry.sequence for entry in page)
                await asyncio.sleep(0)
            for thread in writers:
                thread.join()
            while page := await follower.entries_after(seen[-1] if seen else 0, 1000):
                seen.extend(entry.sequence for entry in page)
            head = await follower.head()
            await follower.close()
            return seen, reads_while_writing, head

        writers = [threading.Thread(target=asyncio.run, args=(writer(number),)) for number in range(4)]
        for thread in writers:
            thread.start()
        seen, reads_while_writing, head = asyncio.run(follow(writers))
        asyncio.run(setup.close())
        assert not errors, errors
        assert reads_while_writing > 5, "the follower must have read while the writers committed"
        assert head > 1000
        assert seen == list(range(1, head + 1)), "the follower skipped or repeated a sequence"

    def test_a_second_writer_waits_for_the_first_to_commit(self, database: str) -> None:
        """While another writer's transaction holds the log, a write waits; it then takes the next sequence."""
        store = open_store(database)
        store.open()
        results: list[StoredEvent | None] = []
        done = threading.Event()

        async def mine() -> None:
            results.extend(await write(store, callback("mine", "Queued", "2024-05-01T10:00:00Z")))
            done.set()

        with _other_writer(database) as commit_other:
            thread = threading.Thread(target=asyncio.run, args=(mine(),))
            thread.start()
            assert not done.wait(0.3), "the write did not wait for the other writer's transaction"
            commit_other()
            thread.join(5)
        assert results[0] is not None
        assert results[0].sequence == 2, "the waiting writer must come after the one that committed first"

        async def check() -> None:
            assert [entry.sequence for entry in await store.entries_after(0, 10)] == [2]  # The other took 1.
            await store.close()

        asyncio.run(check())


class TestWatch:
    """``wait_for_commits`` wakes a follower for entries another process committed, not for its own."""

    async def test_own_commits_do_not_wake_the_watch_and_anothers_do(self, store: Store, database: str) -> None:
        other = open_store(database)
        try:
            await write(store, callback("m0", "Queued", "2024-05-01T10:00:00Z"))
            await store.wait_for_commits(0.1)  # The first look: what the watch compares with from now on.
            for number in range(1, 6):
                await write(store, callback(f"m{number}", "Queued", "2024-05-01T10:00:00Z"))
            assert await store.wait_for_commits(0.5) is False, "the store's own commits woke its watch"
            watch = asyncio.create_task(store.wait_for_commits(30))
            await write(other, callback("theirs", "Queued", "2024-05-01T10:00:00Z"))
            assert await asyncio.wait_for(watch, 5) is True
        finally:
            await other.close()

    async def test_anothers_entries_wake_the_watch_after_an_own_commit_without_entries(
        self, store: Store, database: str
    ) -> None:
        """Another process's entries, then this store's heartbeat (no entry): the entries are still news."""
        other = open_store(database)
        try:
            await write(store, callback("m0", "Queued", "2024-05-01T10:00:00Z"))
            await store.wait_for_commits(0.1)
            await write(other, callback("theirs", "Queued", "2024-05-01T10:00:00Z"))
            await store.write([Probe()], NOW_US)
            assert await store.wait_for_commits(5) is True
        finally:
            await other.close()


@contextlib.contextmanager
def _other_writer(database: str) -> Iterator[Callable[[], None]]:
    """Another writer mid-transaction, holding the log's lock as the engine takes it, having taken sequence 1."""
    if is_postgres(database):
        with psycopg.connect(database, autocommit=True) as connection:
            transaction = connection.transaction()
            transaction.__enter__()
            connection.execute("SELECT value FROM meta WHERE key = 'last_sequence' FOR UPDATE")
            connection.execute("UPDATE meta SET value = 1 WHERE key = 'last_sequence'")
            yield lambda: transaction.__exit__(None, None, None)
    else:
        connection = sqlite3.connect(database, isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("UPDATE meta SET value = 1 WHERE key = 'last_sequence'")
        yield lambda: connection.execute("COMMIT")
        connection.close()


def quarantine(body: bytes, max_bytes: int = 10_000, kind: str = STATUS, max_entries: int = 1000) -> Quarantine:
    return Quarantine(
        body, "192.0.2.7", 422, "invalid_callback", "status.updatedDate: Field required", max_bytes, kind, max_entries
    )


class TestQuarantine:
    """Bodies refused for their content, kept for an operator."""

    async def test_a_refused_body_is_kept_and_a_retry_only_counts(self, store: Store) -> None:
        """The same body again raises its attempt count; it is not kept twice."""
        first = (await store.write([quarantine(b'{"a": 1}')], 1000)).results[0]
        again = (await store.write([quarantine(b'{"a": 1}')], 2000)).results[0]
        other = (await store.write([quarantine(b'{"b": 2}')], 3000)).results[0]
        assert first == again != other
        held = await store.quarantined()
        assert [(item.id, item.attempts, item.received_us, item.last_us) for item in held] == [
            (first, 2, 1000, 2000),
            (other, 1, 3000, 3000),
        ]
        assert (held[0].peer, held[0].status, held[0].reason, held[0].body) == (
            "192.0.2.7",
            422,
            "invalid_callback",
            b'{"a": 1}',
        )
        assert await store.quarantine_size() == (2, 2 * quarantine_cost(quarantine(b'{"a": 1}')))

    async def test_past_its_bound_the_longest_unseen_go_first(self, store: Store) -> None:
        """The quarantine holds at most max_bytes, each entry counted for what it stores (its row as well as its
        body); the entries seen longest ago make room."""
        cost = quarantine_cost(quarantine(b"x" * 101))
        assert cost > 101 + QUARANTINE_ENTRY_BYTES
        for number in range(5):
            await store.write([quarantine(b"x" * 100 + str(number).encode(), max_bytes=3 * cost + 10)], 1000 + number)
        assert [item.body[-1:] for item in await store.quarantined()] == [b"2", b"3", b"4"]
        assert await store.quarantine_size() == (3, 3 * cost)

    async def test_past_its_entries_bound_the_longest_unseen_go_first(self, store: Store) -> None:
        """However small the bodies, the quarantine holds at most ``max_entries`` of them."""
        for number in range(8):
            await store.write([quarantine(b"%d" % number, max_bytes=10**9, max_entries=5)], 1000 + number)
        assert [item.body for item in await store.quarantined()] == [b"3", b"4", b"5", b"6", b"7"]

    async def test_tiny_bodies_count_for_their_rows(self, store: Store) -> None:
        """3 000 distinct 3-byte bodies under a 10 KB bound: only as many as their rows fit are kept (all 3 000 were,
        9 000 bytes of bodies but 938 KB on disk)."""
        for start in range(0, 3000, 500):
            await store.write([quarantine(b"%03d" % (n % 1000) + bytes([65 + n // 1000]), max_bytes=10_000)
                               for n in range(start, start + 500)], 1000 + start)  # fmt: skip
        count, size = await store.quarantine_size()
        assert count == 10_000 // quarantine_cost(quarantine(b"0000"))
        assert size <= 10_000

    async def test_drop_by_id_by_age_or_all(self, store: Store) -> None:
        """Dropping removes what it names and frees its bytes."""
        ids = [(await store.write([quarantine(b"%d" % number)], number)).results[0] for number in range(4)]
        assert (await store.write([DropQuarantined(ids=(ids[1],))], 9)).results == [1]
        assert (await store.write([DropQuarantined(seen_before_us=1)], 9)).results == [1]
        assert [item.id for item in await store.quarantined()] == ids[2:]
        assert (await store.write([DropQuarantined()], 9)).results == [2]
        assert await store.quarantine_size() == (0, 0)

    async def test_release_stores_the_event_and_empties_the_entry_together(self, store: Store) -> None:
        """A body that now passes becomes a normal event and leaves the quarantine in the same transaction."""
        (held,) = (await store.write([quarantine(b"{}")], 1000)).results
        result = await store.write(
            [Release(held, AppendStatus(callback("m1", "Queued", "2024-05-01T10:00:00Z")))], 2000
        )
        assert [entry.tracking_id for entry in result.entries] == ["m1"]
        assert await store.quarantined() == []
        assert [event.status_name for event in await store.history("m1")] == ["Queued"]


class TestPostgresSessions:
    """PostgreSQL only: what each session promises, whatever the server's or the role's defaults."""

    async def test_the_writer_commits_synchronously_whatever_the_database_default(
        self, postgres: PostgresServer
    ) -> None:
        """A database whose default is ``synchronous_commit = off``: the writer's session still commits with
        ``on`` (a 200 must survive the database host), and reads carry a statement timeout."""
        database = postgres.create_database()
        name = database.rsplit("/", 1)[1]
        postgres.execute(f"ALTER DATABASE {name} SET synchronous_commit = off")
        postgres.execute(f"ALTER DATABASE {name} SET statement_timeout = 0")
        store = open_store(database)
        store.open()
        try:
            await write(store, callback("m1", "Queued", "2024-05-01T10:00:00Z"))
            writer = store._writer  # type: ignore[attr-defined]  # the session the engine writes on
            assert (await (await writer.execute("SHOW synchronous_commit")).fetchone()) == ("on",)
            shown = await store._read(  # type: ignore[attr-defined]
                lambda connection: _show(connection, "statement_timeout")
            )
            assert shown == f"{READ_STATEMENT_TIMEOUT_MS // 1000}s"
        finally:
            await store.close()
        with psycopg.connect(database) as other:  # The database's default is unchanged: only our sessions differ.
            assert other.execute("SHOW synchronous_commit").fetchone() == ("off",)


async def _show(connection: psycopg.AsyncConnection[object], setting: str) -> str:
    row = await (await connection.execute(f"SHOW {setting}")).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return str(row[0])


class TestOneMessageIsBounded:
    """A message's answer carries its latest events and replies, and counts them all."""

    async def test_the_latest_events_and_replies_with_their_totals(self, store: Store) -> None:
        """150 events and 130 replies: the latest 100 events in precedence order (the current last) and the 100
        replies received last, with totals of 150 and 130; the same in a batch read."""
        for second in range(150):
            minute, rest = divmod(second, 60)
            await write(store, callback("big", "Delivered", f"2024-05-01T10:{minute:02d}:{rest:02d}Z"))
        for number in range(130):
            await store.write([AppendInbound(reply("big", f"reply {number}"))], NOW_US + number)
        state = await store.message("big")
        assert state is not None
        assert (len(state.history), state.events_total, len(state.replies), state.replies_total) == (100, 150, 100, 130)
        assert state.current == state.history[-1]
        assert state.current.update_us == max(event.update_us for event in state.history)
        assert state.history == sorted(state.history, key=lambda event: (event.update_us, event.sequence))
        assert [reply_text(item) for item in state.replies] == [f"reply {n}" for n in range(30, 130)]
        batch = await store.statuses(["big", "none"], history=True)
        assert list(batch) == ["big"]
        assert (batch["big"].history, batch["big"].replies) == (state.history, state.replies)
        assert (batch["big"].events_total, batch["big"].replies_total) == (150, 130)


def reply_text(item: StoredInbound) -> str:
    return pb.InboundMessage.FromString(item.message).text


class TestSqlitePlans:
    """SQLite only: what its planner does with the reads that grow with a campaign."""

    def test_a_campaign_snapshot_is_linear(self, tmp_path: Path) -> None:
        """The snapshot of a campaign walks that campaign's messages by their index and finds each current event
        by its primary key: no scan, and no search per event (which made 30 000 messages take minutes)."""
        store = open_store(str(tmp_path / "plans.db"))
        store.open()
        asyncio.run(store.close())
        for event_filter in (EventFilter("c1", frozenset({pb.MESSAGE_STATUS_QUEUED})), EventFilter()):
            sql, params = snapshot_page(sqlite_engine.SQLITE, event_filter, 10, "m5", 500)
            sql = sql.replace("%s", "?")
            with sqlite3.connect(tmp_path / "plans.db") as connection:
                plan = [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            # The walk itself; a message changed after the snapshot's sequence then sorts its own few events.
            walk = plan[: next(n for n, step in enumerate(plan) if "SUBQUERY" in step)]
            assert walk[0].startswith("SEARCH m USING"), plan  # The campaign's index, or the primary key for all.
            assert walk[1].startswith("SEARCH e USING INTEGER PRIMARY KEY"), plan
            assert not any(step.startswith("SCAN") or "TEMP B-TREE" in step for step in walk), plan
            assert not any(step.startswith("SCAN") for step in plan), plan
