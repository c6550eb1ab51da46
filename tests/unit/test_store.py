"""The SQLite store: distinct events, sequences, the current-status rule, duplicates, group commit."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from http_ingress.schemas import parse_callback
from routee.callbacks.v1 import callback_pb2 as pb
from service.events import EventFilter, StoredEvent
from service.store import SqliteStore
from support import fixture_bodies


def callback(tracking_id: str, name: str, date: str, campaign: str = "c1") -> pb.ViberCallback:
    """A minimal callback."""
    return parse_callback(
        f'{{"trackingId": "{tracking_id}", "campaignTrackingId": "{campaign}",'
        f' "status": {{"name": "{name}", "updatedDate": "{date}"}}}}'.encode()
    )


class Recorder:
    """Collects what the store hands to on_commit."""

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []

    def __call__(self, events: Sequence[StoredEvent]) -> None:
        self.events.extend(events)


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def store(tmp_path: Path, recorder: Recorder) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "test.db", on_commit=recorder, clock=itertools.count(1_700_000_000).__next__)
    store.open()
    yield store
    store.close()


class TestAppend:
    """Appending callbacks."""

    async def test_sequences_increase_and_duplicates_are_recognised(
        self, store: SqliteStore, recorder: Recorder
    ) -> None:
        """Each distinct event gets the next sequence; the same event again is a duplicate, not published."""
        first = await store.append(callback("m1", "Queued", "2024-05-01T10:00:00Z"))
        second = await store.append(callback("m1", "Delivered", "2024-05-01T10:00:05Z"))
        again = await store.append(callback("m1", "DELIVERED", "2024-05-01T10:00:05.000Z"))
        assert first is not None
        assert second is not None
        assert (first.sequence, second.sequence) == (1, 2)
        assert again is None
        assert [event.sequence for event in recorder.events] == [1, 2]
        assert await store.last_sequence() == 2

    async def test_same_name_other_instant_is_distinct(self, store: SqliteStore) -> None:
        """Queued can reappear after a failed attempt: another instant is another event."""
        assert await store.append(callback("m1", "Queued", "2024-05-01T10:00:00Z")) is not None
        assert await store.append(callback("m1", "Queued", "2024-05-01T10:05:00Z")) is not None
        assert len(await store.history("m1")) == 2

    async def test_concurrent_appends_are_group_committed_in_order(
        self, store: SqliteStore, recorder: Recorder
    ) -> None:
        """Many concurrent appends all get distinct sequences and are published in sequence order."""
        results = await asyncio.gather(
            *(store.append(callback(f"m{index}", "Queued", "2024-05-01T10:00:00Z")) for index in range(300))
        )
        sequences = sorted(event.sequence for event in results if event is not None)
        assert sequences == list(range(1, 301))
        assert [event.sequence for event in recorder.events] == sequences

    async def test_probe_writes(self, store: SqliteStore) -> None:
        """The readiness probe goes through the writer."""
        await store.probe()


class TestCurrentStatus:
    """The decided rule: latest updatedDate, then lifecycle rank, then the later stored."""

    async def current(self, store: SqliteStore, tracking_id: str) -> StoredEvent:
        return (await store.history(tracking_id))[-1]

    async def test_late_older_event_does_not_move_current_back(self, store: SqliteStore) -> None:
        """A Delivered that arrives after Seen goes into history but is not current."""
        await store.append(callback("m1", "Seen", "2024-05-01T10:02:00Z"))
        late = await store.append(callback("m1", "Delivered", "2024-05-01T10:01:00Z"))
        assert late is not None
        assert not late.is_current
        current = await self.current(store, "m1")
        assert current.status_name == "Seen"
        assert [event.status_name for event in await store.history("m1")] == ["Delivered", "Seen"]

    async def test_expired_after_delivered_is_current(self, store: SqliteStore) -> None:
        """Expire-on-delivery: Expired later than Delivered becomes current."""
        await store.append(callback("m1", "Delivered", "2024-05-01T10:01:00Z"))
        expired = await store.append(callback("m1", "Expired", "2024-05-01T10:01:30Z"))
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
    async def test_equal_dates_use_rank_then_storage_order(
        self, store: SqliteStore, names: list[str], winner: str
    ) -> None:
        """On equal updatedDate the higher lifecycle rank wins; on equal rank too, the one stored later."""
        for name in names:
            await store.append(callback("m1", name, "2024-05-01T10:00:00Z"))
        assert (await self.current(store, "m1")).status_name == winner

    async def test_any_order_gives_the_same_state(self, tmp_path: Path) -> None:
        """All fixtures, shuffled and duplicated, end in the same current statuses."""
        bodies = list(fixture_bodies().values())
        outcomes = []
        for attempt in range(5):
            store = SqliteStore(tmp_path / f"order-{attempt}.db")
            store.open()
            try:
                shuffled = bodies * 3
                random.Random(attempt).shuffle(shuffled)
                for body in shuffled:
                    await store.append(parse_callback(body))
                state = {}
                for index in range(1, 6):
                    history = await store.history(f"a1b2c3d4-0000-4000-8000-00000000000{index}")
                    state[index] = (history[-1].status_name, len(history))
                outcomes.append(state)
                assert await store.last_sequence() == len(bodies)
            finally:
                store.close()
        assert all(outcome == outcomes[0] for outcome in outcomes)
        assert outcomes[0] == {
            1: ("Seen", 3),
            2: ("Failed", 2),
            3: ("Expired", 2),
            4: ("Undelivered", 1),
            5: ("Unsent", 1),
        }


class TestReads:
    """Replay and snapshot reads."""

    async def test_events_after_filters_and_pages(self, store: SqliteStore) -> None:
        """events_after returns what follows a sequence, for one campaign or all, a page at a time."""
        for index in range(10):
            await store.append(callback(f"m{index}", "Queued", "2024-05-01T10:00:00Z", campaign=f"c{index % 2}"))
        every = await store.events_after(0, EventFilter(), 100)
        assert [event.sequence for event in every] == list(range(1, 11))
        campaign = await store.events_after(2, EventFilter("c0"), 3)
        assert [event.sequence for event in campaign] == [3, 5, 7]
        failed = await store.events_after(0, EventFilter(statuses=frozenset({pb.MESSAGE_STATUS_FAILED})), 100)
        assert failed == []

    async def test_snapshot_is_current_status_of_each_message(self, store: SqliteStore) -> None:
        """A snapshot holds each message's current event and the last sequence it covers."""
        await store.append(callback("m1", "Queued", "2024-05-01T10:00:00Z"))
        await store.append(callback("m1", "Seen", "2024-05-01T10:02:00Z"))
        await store.append(callback("m1", "Delivered", "2024-05-01T10:01:00Z"))  # late, not current
        await store.append(callback("m2", "Queued", "2024-05-01T10:00:00Z", campaign="other"))
        events, position = await store.snapshot(EventFilter("c1"))
        assert [(event.tracking_id, event.status_name) for event in events] == [("m1", "Seen")]
        assert position == 4
        assert all(event.is_current for event in events)


class TestOpen:
    """Opening the store."""

    def test_unusable_path_is_a_startup_error(self, tmp_path: Path) -> None:
        """A database in a missing directory cannot be opened."""
        from service.errors import StartupError

        store = SqliteStore(tmp_path / "missing" / "dir" / "x.db")
        with pytest.raises(StartupError, match="cannot open database"):
            store.open()


class TestRetention:
    """Pruning old events."""

    async def test_prune_deletes_old_events_and_repairs_current(self, tmp_path: Path) -> None:
        """Events received before the cutoff go; a message keeps its best remaining event as current."""
        now = [1000.0]
        store = SqliteStore(tmp_path / "prune.db", clock=lambda: now[0])
        store.open()
        try:
            await store.append(callback("old", "Queued", "2024-05-01T10:00:00Z"))  # 1
            await store.append(callback("m1", "Seen", "2024-05-01T10:02:00Z"))  # 2, current of m1
            now[0] = 2000.0
            await store.append(callback("m1", "Delivered", "2024-05-01T10:01:00Z"))  # 3, late
            await store.append(callback("new", "Queued", "2024-05-01T10:00:00Z"))  # 4
            assert await store.prune(1500.0, chunk=1) == 2
            assert await store.pruned_through() == 2
            assert await store.history("old") == []
            assert [event.sequence for event in await store.history("m1")] == [3]
            snapshot, position = await store.snapshot(EventFilter())
            assert [event.sequence for event in snapshot] == [3, 4]
            assert position == 4
            assert await store.prune(1500.0) == 0
            # Forgotten after retention: the same event again is stored anew (the window is >= 48 h).
            assert await store.append(callback("old", "Queued", "2024-05-01T10:00:00Z")) is not None
        finally:
            store.close()
