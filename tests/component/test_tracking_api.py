"""The tracking API client against a fake Routee on loopback: tokens cached and renewed, pacing, back-off, wrong
credentials, and what an API object becomes."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest

from routee.callbacks.v1 import callback_pb2 as pb
from service.config.settings import Credentials
from service.domain.errors import CredentialsRejectedError, TrackingApiUnavailableError
from service.reconcile.tracking_api import TrackingApi
from service.routee.tracking import parse_tracked, tracked_callback
from support.fake_routee import APPLICATION_ID, SECRET, FakeRoutee, fake_routee, tracking_object


class Clock:
    """Time that only moves when the client sleeps (or a test says so)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def fake() -> AsyncIterator[FakeRoutee]:
    with fake_routee() as running:
        running.messages["m1"] = tracking_object("m1", "Delivered", "2024-05-01T10:00:02.5Z")
        yield running


def client(fake: FakeRoutee, clock: Clock, *, secret: str = SECRET, rate: float = 100.0) -> TrackingApi:
    return TrackingApi(
        Credentials(APPLICATION_ID, secret),
        api_url=fake.url,
        auth_url=fake.url,
        rate=rate,
        clock=clock,
        sleep=clock.sleep,
    )


async def test_one_token_with_the_right_basic_credentials_serves_many_calls(fake: FakeRoutee) -> None:
    api = client(fake, Clock())
    try:
        assert (await api.message("m1") or [{}])[0]["status"]["status"] == "Delivered"
        assert await api.message("unknown") is None
        assert await api.message("m1") is not None
    finally:
        await api.close()
    expected = base64.b64encode(f"{APPLICATION_ID}:{SECRET}".encode()).decode()
    assert fake.token_requests == [f"Basic {expected}"]
    assert {token for _, token in fake.calls} == {"token-1"}


async def test_a_token_is_renewed_before_it_expires_and_after_a_401(fake: FakeRoutee) -> None:
    fake.token_lifetime = 600
    clock = Clock()
    api = client(fake, clock)
    try:
        await api.message("m1")
        clock.now += 541  # 60 s before expiry: renewed ahead of time.
        await api.message("m1")
        fake.revoke_tokens()  # Stops working early: one 401, one new token, the same call again.
        assert await api.message("m1") is not None
    finally:
        await api.close()
    assert [token for _, token in fake.calls] == ["token-1", "token-2", "token-2", "token-3"]
    assert len(fake.token_requests) == 3


async def test_429_and_5xx_are_retried_after_waiting(fake: FakeRoutee) -> None:
    fake.faults += [429, 503, 502]
    clock = Clock()
    api = client(fake, clock)
    try:
        assert await api.message("m1") is not None
    finally:
        await api.close()
    assert len(fake.calls) == 4
    # Retry-After: 0 for the 429, then 2 and 4 s of back-off (the first attempt waits 1 s at most).
    assert [wait for wait in clock.slept if wait >= 0.5] == [2.0, 4.0]


async def test_an_api_that_keeps_failing_is_unavailable_not_a_hang(fake: FakeRoutee) -> None:
    fake.faults += [503] * 10
    api = client(fake, Clock())
    try:
        with pytest.raises(TrackingApiUnavailableError):
            await api.message("m1")
    finally:
        await api.close()
    assert len(fake.calls) == 5


async def test_a_wrong_secret_is_refused_without_showing_it(fake: FakeRoutee) -> None:
    api = client(fake, Clock(), secret="wrong-secret")
    try:
        with pytest.raises(CredentialsRejectedError) as refused:
            await api.message("m1")
    finally:
        await api.close()
    assert APPLICATION_ID in str(refused.value)
    assert "wrong-secret" not in str(refused.value)
    assert fake.calls == []


async def test_calls_are_paced_to_the_rate(fake: FakeRoutee) -> None:
    clock = Clock()
    api = client(fake, clock, rate=5.0)
    try:
        for _ in range(6):
            await api.message("m1")
    finally:
        await api.close()
    assert sum(clock.slept) == pytest.approx(1.0)  # Six calls at five a second: five gaps of 0.2 s.


async def test_campaign_pages(fake: FakeRoutee) -> None:
    fake.campaigns["c1"] = [tracking_object(f"m{n}", "Seen", "2024-05-01T10:00:00Z", campaign="c1") for n in range(250)]
    api = client(fake, Clock())
    try:
        pages = [await api.campaign_page("c1", page) for page in range(3)]
        unknown = await api.campaign_page("nope", 0)
    finally:
        await api.close()
    assert [len(page.items) for page in pages] == [100, 100, 50]
    assert [page.last for page in pages] == [False, False, True]
    assert pages[0].total_pages == 3
    assert (unknown.items, unknown.last) == ([], True)


def test_an_api_object_becomes_the_callback_of_the_same_change() -> None:
    """``status.status``/``status.date`` are a callback's ``status.name``/``status.updatedDate``: the event key is
    the one the callback of the same change would have; raw_json keeps the API's own JSON."""
    item = tracking_object("m1", "Failed", "2024-05-01T10:00:02.500Z", campaign="c9")
    callback = tracked_callback(parse_tracked, item)
    assert (callback.tracking_id, callback.campaign_tracking_id) == ("m1", "c9")
    assert (callback.status.status, callback.status.name) == (pb.MESSAGE_STATUS_FAILED, "Failed")
    assert callback.status.update_time.ToJsonString() == "2024-05-01T10:00:02.500Z"
    assert callback.status.reason.detailed_status == "Not Viber User"
    assert callback.body.text == "Spring sale: 20% off today"
    assert '"expireOnDelivery": false' in callback.raw_json
    single = tracking_object("m2", "Delivered", "2024-05-01T10:00:00Z")  # A single lookup names no campaign.
    assert tracked_callback(parse_tracked, single, "c1").campaign_tracking_id == "c1"
