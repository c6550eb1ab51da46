"""Reconciliation on a real store (both engines) against a fake Routee: what the tracking API says becomes an
event like a callback's; lookups back off, stop at final statuses and after TTL plus a day; a campaign backfill."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from routee.callbacks.v1 import callback_pb2 as pb
from service.config.settings import Credentials
from service.domain.rules import FROM_CALLBACK, FROM_TRACKING_API
from service.reconcile.reconciler import Reconciler, ReconcileState, backfill
from service.reconcile.tracking_api import TrackingApi
from service.routee.tracking import parse_tracked
from support.embedded import Embedded
from support.fake_routee import APPLICATION_ID, SECRET, FakeRoutee, fake_routee, tracking_object

HOUR = 3600.0
# Dates near the real time: the store takes its receive times from the real clock, and reconciliation gives up on
# messages older than their TTL plus a day.
QUEUED_S = float(int(time.time()))


def date(seconds_after_queued: float = 0.0) -> str:
    moment = datetime.fromtimestamp(QUEUED_S, UTC) + timedelta(seconds=seconds_after_queued)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


QUEUED_AT = date()


def body(tracking_id: str, status: str, date: str, ttl: int = 86400, campaign: str = "c1") -> bytes:
    return (
        f'{{"trackingId": "{tracking_id}", "campaignTrackingId": "{campaign}", "ttl": {ttl},'
        f' "status": {{"name": "{status}", "updatedDate": "{date}"}}}}'
    ).encode()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def service(database: str) -> AsyncIterator[Embedded]:
    embedded = Embedded(database)
    await embedded.start()
    yield embedded
    await embedded.stop()


@pytest.fixture
def fake() -> AsyncIterator[FakeRoutee]:
    with fake_routee() as running:
        yield running


async def reconciler(
    service: Embedded, fake: FakeRoutee, clock: Clock, tmp_path: Path, *, mismatched: Callable[[], None] = lambda: None
) -> Reconciler:
    api = TrackingApi(Credentials(APPLICATION_ID, SECRET), api_url=fake.url, auth_url=fake.url, rate=1000.0)
    return Reconciler(
        service.store,
        service.log.writer,
        api,
        parse_tracked,
        after=HOUR,
        state=ReconcileState(tmp_path / "reconcile.json"),
        clock=clock,
        mismatched=mismatched,
    )


async def test_a_status_no_callback_brought_is_asked_for_after_the_delay(
    service: Embedded, fake: FakeRoutee, tmp_path: Path
) -> None:
    await service.append(body("m1", "Queued", QUEUED_AT))
    fake.messages["m1"] = tracking_object("m1", "Delivered", date(2))
    clock = Clock()
    reconcile = await reconciler(service, fake, clock, tmp_path)
    stored_at = clock.now
    clock.now = stored_at + HOUR - 60  # Not yet.
    assert (await reconcile.reconcile_due()).looked_up == 0
    clock.now = stored_at + HOUR + 60
    counts = await reconcile.reconcile_due()
    assert (counts.looked_up, counts.new_events) == (1, 1)
    history = await service.store.history("m1")
    assert [(event.status_name, event.source) for event in history] == [
        ("Queued", FROM_CALLBACK),
        ("Delivered", FROM_TRACKING_API),
    ]
    assert history[-1].campaign_tracking_id == "c1", "a single lookup keeps the message's campaign"
    # The callback of the same change, arriving late, is a duplicate; Delivered is not final: due again later.
    assert await service.append(body("m1", "DELIVERED", date(2).replace(".000Z", "Z"))) is None
    clock.now += HOUR + 60
    assert (await reconcile.reconcile_due()).looked_up == 1
    fake.messages["m1"] = tracking_object("m1", "Seen", date(300))
    clock.now += 4 * HOUR + 60
    assert (await reconcile.reconcile_due()).new_events == 1
    clock.now += 1000 * HOUR
    assert (await reconcile.reconcile_due()).looked_up == 0, "Seen is final"
    assert [path for path, _ in fake.calls] == ["/viber/tracking/m1"] * 3


async def test_lookups_that_change_nothing_back_off_and_stop_after_ttl_and_a_day(
    service: Embedded, fake: FakeRoutee, tmp_path: Path
) -> None:
    await service.append(body("m1", "Queued", QUEUED_AT, ttl=7200))
    fake.messages["m1"] = tracking_object("m1", "Queued", QUEUED_AT)  # Routee knows nothing newer either.
    clock = Clock()
    reconcile = await reconciler(service, fake, clock, tmp_path)
    stored_at = clock.now
    looked_up_at = []
    while clock.now < stored_at + 7200 + 86400 + 70 * HOUR:
        clock.now += 600
        if (await reconcile.reconcile_due()).looked_up:
            looked_up_at.append(round((clock.now - stored_at) / HOUR, 1))
    # After 1 h, then 4 h later, then 16 h and 64 h later (each found at the next 10-minute step); by then the
    # message is older than its TTL (2 h) plus a day: given up without a call.
    assert looked_up_at == pytest.approx([1.0, 5.0, 21.0, 85.0], abs=0.6)
    assert len(fake.calls) == 3, "the last one gave up without a call"
    assert len(await service.store.history("m1")) == 1


async def test_a_campaign_backfill_stores_what_is_new_once(service: Embedded, fake: FakeRoutee) -> None:
    fake.campaigns["c7"] = [
        tracking_object(f"m{n:03d}", "Seen" if n % 2 else "Failed", "2024-05-01T10:00:00Z", campaign="c7")
        for n in range(230)
    ]
    await service.append(body("m001", "Seen", "2024-05-01T10:00:00Z", campaign="c7"))  # Known already.
    api = TrackingApi(Credentials(APPLICATION_ID, SECRET), api_url=fake.url, auth_url=fake.url, rate=1000.0)
    try:
        first = await backfill(service.store, api, parse_tracked, "c7")
        again = await backfill(service.store, api, parse_tracked, "c7")
    finally:
        await api.close()
    assert (first.looked_up, first.new_events) == (230, 229)
    assert (again.looked_up, again.new_events) == (230, 0)
    summary = await service.store.campaign_summary("c7")
    assert summary is not None
    assert summary.counts == {pb.MESSAGE_STATUS_SEEN: 115, pb.MESSAGE_STATUS_FAILED: 115}
    assert len(fake.token_requests) == 1


async def test_an_odd_tracking_id_stays_one_path_segment(service: Embedded, fake: FakeRoutee, tmp_path: Path) -> None:
    """A stored id made of path syntax is percent-encoded: the bearer token goes to that message's lookup only,
    never to another resource of the API."""
    odd = "../../accounts/me/balance#"
    await service.append(body(odd, "Queued", QUEUED_AT))
    clock = Clock()
    reconcile = await reconciler(service, fake, clock, tmp_path)
    clock.now += HOUR + 60
    assert (await reconcile.reconcile_due()).looked_up == 1
    assert [path for path, _ in fake.calls] == ["/viber/tracking/..%2F..%2Faccounts%2Fme%2Fbalance%23"]


async def test_an_answer_about_another_message_is_discarded_and_counted(
    service: Embedded, fake: FakeRoutee, tmp_path: Path
) -> None:
    """Routee's answer names another tracking id than the one asked for: nothing is stored, for either id, and
    the mismatch is counted."""
    await service.append(body("m1", "Queued", QUEUED_AT))
    fake.messages["m1"] = tracking_object("m2", "Delivered", date(2))
    clock = Clock()
    mismatches: list[int] = []
    reconcile = await reconciler(service, fake, clock, tmp_path, mismatched=lambda: mismatches.append(1))
    clock.now += HOUR + 60
    assert (await reconcile.reconcile_due()).new_events == 0
    assert [event.status_name for event in await service.store.history("m1")] == ["Queued"]
    assert await service.store.history("m2") == []
    assert mismatches == [1]
