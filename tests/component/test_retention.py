"""Retention as the writer runs it: by the log's own time, on every engine, whatever the wall clock does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from service.log.local import LocalLog, Retention, next_chunk
from service.routee.callbacks import parse_callback, parse_inbound
from service.store import AppendInbound, AppendStatus, Quarantine, open_store

DAY = 86_400.0
RETENTION = 7 * DAY
T0 = 1_720_000_000.0  # 2024-07-03: after the callbacks' updatedDate, as a real clock is


@dataclass
class FakeClock:
    """A wall clock the test sets."""

    now: float = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def log(database: str) -> AsyncIterator[tuple[LocalLog, FakeClock]]:
    clock = FakeClock()
    store = open_store(database)
    store.open()
    local = LocalLog(store, lambda updates: None, clock=clock)
    await local.start()
    yield local, clock
    await local.stop()
    await store.close()


async def post(log: LocalLog, *tracking_ids: str, campaign: str = "") -> None:
    """Store one Queued event of each message, received at the clock's time."""
    for tracking_id in tracking_ids:
        body = (
            f'{{"trackingId": "{tracking_id}", "campaignTrackingId": "{campaign}",'
            ' "status": {"name": "Queued", "updatedDate": "2024-05-01T10:00:00Z"}}'
        )
        await log.writer.submit(AppendStatus(parse_callback(body.encode()).callback))


class TestRetention:
    """Pruning never follows the wall clock alone."""

    async def test_a_clock_jumping_ahead_does_not_delete_what_was_just_acknowledged(
        self, log: tuple[LocalLog, FakeClock]
    ) -> None:
        """The clock jumps 8 days ahead minutes after callbacks were acknowledged: a retention pass of 7 days
        deletes none of them."""
        local, clock = log
        await post(local, "m1", "m2", "m3")
        clock.now += 7 * 60
        await post(local, "m4")
        clock.now += 8 * DAY
        assert await local.prune_expired(Retention(RETENTION, quarantine=14 * DAY)) == (0, 0)
        assert [await local.store.message(tracking_id) is not None for tracking_id in ("m1", "m4")] == [True, True]

    async def test_entries_older_than_the_retention_before_the_newest_are_pruned(
        self, log: tuple[LocalLog, FakeClock]
    ) -> None:
        """Retention still works: what was received more than the retention before the newest entry (and before
        the clock) goes, the rest stays."""
        local, clock = log
        await post(local, "old")
        clock.now += 8 * DAY
        await post(local, "new")
        clock.now += 60
        assert await local.prune_expired(Retention(RETENTION)) == (1, 0)
        assert await local.store.message("old") is None
        assert await local.store.message("new") is not None

    async def test_quarantine_expiry_is_measured_by_the_log_too(self, log: tuple[LocalLog, FakeClock]) -> None:
        """A quarantined body seen a minute ago survives a clock 30 days ahead."""
        local, clock = log
        await post(local, "m1")
        await local.writer.submit(Quarantine(b"{}", "127.0.0.1", 422, "invalid_callback", "no trackingId", 1 << 20))
        clock.now += 30 * DAY
        assert await local.prune_expired(Retention(RETENTION, quarantine=14 * DAY)) == (0, 0)
        assert len(await local.store.quarantined()) == 1


async def reply(log: LocalLog, reference: str, text: str) -> None:
    """Store one reply to ``reference``, received at the clock's time."""
    body = (
        f'{{"from": "+306900000001", "message": "{text}", "sentDate": "2024-05-01T10:00:00Z",'
        f' "referenceTrackingId": "{reference}"}}'
    )
    await log.writer.submit(AppendInbound(parse_inbound(body.encode()).message))


class TestEverythingHasARetention:
    """Replies and campaign summaries have retentions of their own; a message goes with its last event."""

    async def test_replies_are_kept_as_long_as_their_own_retention_says(self, log: tuple[LocalLog, FakeClock]) -> None:
        local, clock = log
        await post(local, "m1")
        await reply(local, "m1", "an old reply")
        clock.now += 4 * DAY
        await post(local, "m2")
        clock.now += 60
        assert await local.prune_expired(Retention(8 * DAY, replies=3 * DAY)) == (1, 0)
        assert (await local.store.message("m1")) is not None, "the event is within its retention"
        assert await local.store.replies("m1") == [], "the reply is not"

    async def test_a_campaign_summary_goes_once_its_messages_are_gone_and_it_is_old(
        self, log: tuple[LocalLog, FakeClock]
    ) -> None:
        """A campaign whose last message was pruned loses its summary once its latest update is older than the
        campaigns' retention; one with a message left keeps it."""
        local, clock = log
        await post(local, "m1", campaign="finished")
        clock.now += 10 * DAY
        await post(local, "m2", campaign="running")
        clock.now += 60
        assert await local.prune_expired(Retention(8 * DAY)) == (1, 0), "no campaign retention: only the event"
        assert await local.store.campaign_summary("finished") is not None
        assert await local.prune_expired(Retention(8 * DAY, campaigns=DAY)) == (1, 0), "now the summary goes"
        assert await local.store.campaign_summary("finished") is None
        assert await local.store.campaign_summary("running") is not None


class TestPruneChunks:
    """Retention transactions stay short, whatever there is to delete."""

    @pytest.mark.parametrize(
        ("limit", "took", "expected"),
        [(500, 0.05, 250), (500, 0.007, 500), (500, 0.001, 1000), (60, 1.0, 50), (4000, 0.0, 5000)],
    )
    def test_a_chunk_grows_or_shrinks_toward_the_transaction_budget(
        self, limit: int, took: float, expected: int
    ) -> None:
        assert next_chunk(limit, took) == expected
