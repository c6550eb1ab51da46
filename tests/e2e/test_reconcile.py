"""End to end: the real service reconciles with a fake Routee on loopback — a status no callback brought appears
from the tracking API (marked so, on GetMessageStatus and on a stream), its later callback is a duplicate;
``reconcile --campaign`` backfills a campaign of several pages while the service streams it; wrong credentials
stop reconciliation with one clear line, not readiness."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import StartService
from routee.callbacks.v1 import callback_pb2 as pb
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from support.fake_routee import (
    APPLICATION_ID,
    SECRET,
    FakeRoutee,
    fake_routee,
    sms_tracking_object,
    tracking_object,
)
from support.fixtures import fixture
from support.network import SMS_PATH, http_request, post_callback
from support.polling import eventually
from support.service_process import OPEN, executable
from support.streams import StreamCollector

pytestmark = pytest.mark.e2e

NOW = datetime.now(UTC).replace(microsecond=0)


def when(seconds: float) -> str:
    return (NOW + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def callback(tracking_id: str, status: str, seconds: float) -> bytes:
    document = fixture("01-m1-queued.json")
    document.update(trackingId=tracking_id, createdAt=when(0))
    document["status"] = {"name": status, "updatedDate": when(seconds)}
    return json.dumps(document).encode()


def routee_options(fake: FakeRoutee) -> tuple[str, ...]:
    return ("--routee-api-url", fake.url, "--routee-auth-url", fake.url, "--routee-application-id", APPLICATION_ID)


@pytest.fixture
def fake() -> Iterator[FakeRoutee]:
    with fake_routee() as running:
        yield running


class TestReconciliation:
    def test_a_status_no_callback_brought_comes_from_the_tracking_api(
        self, start_service: StartService, fake: FakeRoutee, database: str
    ) -> None:
        service = start_service(
            *OPEN, *routee_options(fake), "--reconcile-after", "1",
            database=database, env={"ROUTEE_CALLBACKS_ROUTEE_APPLICATION_SECRET": SECRET},
        )  # fmt: skip
        stream = StreamCollector(service.grpc_target, pb2.StreamStatusUpdatesRequest())
        try:
            fake.messages["r1"] = tracking_object("r1", "Delivered", when(2))
            assert post_callback(service.http_port, callback("r1", "Queued", 0)).status == 200
            eventually(lambda: service.get_status("r1").status_name == "Delivered", "no Delivered from the API")
            response = service.get_status("r1")
            assert [(e.status_name, e.source) for e in response.events] == [
                ("Queued", pb2.EVENT_SOURCE_CALLBACK),
                ("Delivered", pb2.EVENT_SOURCE_TRACKING_API),
            ]
            assert '"expireOnDelivery"' in response.callback.raw_json, "raw_json is the API's own answer"
            updates = stream.wait_for(2)
            assert [(u.status_name, u.source) for u in updates] == [
                ("Queued", pb2.EVENT_SOURCE_CALLBACK),
                ("Delivered", pb2.EVENT_SOURCE_TRACKING_API),
            ]
            late = post_callback(service.http_port, callback("r1", "Delivered", 2))
            assert (late.status, late.json()) == (200, {"status": "duplicate"})
        finally:
            stream.close()
        expected = base64.b64encode(f"{APPLICATION_ID}:{SECRET}".encode()).decode()
        assert fake.token_requests == [f"Basic {expected}"], "one token, the right credentials"
        ready = http_request(service.http_port, "GET", "/readyz").json()
        assert ready["checks"]["reconcile"]["state"] == "running"
        metrics = http_request(service.http_port, "GET", "/metrics").body.decode()
        assert 'routee_callbacks_tracking_api_calls_total{endpoint="message",outcome="ok"}' in metrics
        assert SECRET not in service.log()

    def test_wrong_credentials_stop_reconciliation_not_readiness(
        self, start_service: StartService, fake: FakeRoutee
    ) -> None:
        service = start_service(
            *OPEN, *routee_options(fake), "--reconcile-after", "1",
            env={"ROUTEE_CALLBACKS_ROUTEE_APPLICATION_SECRET": "not-the-secret"},
        )  # fmt: skip
        assert post_callback(service.http_port, callback("r2", "Queued", 0)).status == 200

        def stopped() -> bool:
            answer = http_request(service.http_port, "GET", "/readyz")
            return answer.status == 200 and answer.json()["checks"]["reconcile"]["state"] == "stopped"

        eventually(stopped, "reconciliation did not report the refused credentials")
        lines = [line for line in service.log().splitlines() if "reconciliation stopped" in line]
        assert len(lines) == 1, lines
        assert APPLICATION_ID in lines[0]
        assert "not-the-secret" not in service.log()


class TestSmsReconciliation:
    def test_an_sms_whose_parts_no_report_brought_is_asked_for_part_by_part(
        self, start_service: StartService, fake: FakeRoutee, database: str
    ) -> None:
        """A 2-part SMS with only part 1's Queued: the SMS tracking API tells both parts delivered; the message
        becomes delivered, its new events marked as from the API."""
        service = start_service(
            *OPEN, *routee_options(fake), "--reconcile-after", "1",
            database=database, env={"ROUTEE_CALLBACKS_ROUTEE_APPLICATION_SECRET": SECRET},
        )  # fmt: skip
        fake.sms_messages["s1"] = [
            sms_tracking_object("s1", 1, 2, "Delivered", when(3)),
            sms_tracking_object("s1", 2, 2, "Delivered", when(4)),
        ]
        report = {"messageId": "s1", "part": 1, "parts": 2, "status": {"name": "Queued", "updatedDate": when(0)}}
        posted = post_callback(service.http_port, json.dumps(report).encode(), path=SMS_PATH)
        assert posted.status == 200
        eventually(lambda: service.get_status("s1").status == pb.MESSAGE_STATUS_DELIVERED, "no Delivered from the API")
        response = service.get_status("s1")
        assert response.channel == pb.CHANNEL_SMS
        assert [(part.part, part.status) for part in response.parts] == [
            (1, pb.MESSAGE_STATUS_DELIVERED),
            (2, pb.MESSAGE_STATUS_DELIVERED),
        ]
        assert [e.source for e in response.events] == [
            pb2.EVENT_SOURCE_CALLBACK,
            pb2.EVENT_SOURCE_TRACKING_API,
            pb2.EVENT_SOURCE_TRACKING_API,
        ]
        assert any(path == "/sms/tracking/single/s1" for path, _ in fake.calls)
        metrics = http_request(service.http_port, "GET", "/metrics").body.decode()
        assert 'routee_callbacks_tracking_api_calls_total{endpoint="sms_message",outcome="ok"}' in metrics


class TestBackfill:
    def test_a_campaign_of_several_pages_that_never_sent_a_callback(
        self, start_service: StartService, fake: FakeRoutee, database: str
    ) -> None:
        campaign = "c0ffee00-0000-4000-8000-00000000bf11"
        fake.campaigns[campaign] = [
            tracking_object(f"b{n:03d}", ["Delivered", "Seen", "Failed"][n % 3], when(n), campaign=campaign)
            for n in range(240)
        ]
        fake.sms_campaigns[campaign] = [  # Ten SMS of two parts: the second part of every other one undelivered.
            sms_tracking_object(f"b{n:03d}", part, 2, "Undelivered" if n % 2 and part == 2 else "Delivered", when(n))
            for n in range(240, 250)
            for part in (1, 2)
        ]
        service = start_service(*OPEN, database=database)
        stream = StreamCollector(service.grpc_target, pb2.StreamStatusUpdatesRequest(campaign_tracking_id=campaign))
        environment = {**os.environ, "ROUTEE_CALLBACKS_ROUTEE_APPLICATION_SECRET": SECRET}
        try:
            command = [
                executable(),
                "reconcile",
                "--campaign",
                campaign,
                "--database",
                database,
                *routee_options(fake),
            ]
            result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)
            assert result.returncode == 0, result.stderr
            assert f"campaign {campaign}: 250 messages seen, 260 new events" in result.stdout
            updates = stream.wait_for(260, timeout=20)
        finally:
            stream.close()
        assert {u.tracking_id for u in updates} == {f"b{n:03d}" for n in range(250)}
        assert {u.source for u in updates} == {pb2.EVENT_SOURCE_TRACKING_API}
        assert [path.rsplit("/", 1)[0] for path, _ in fake.calls] == [
            *["/viber/tracking/campaign"] * 3,
            "/sms/tracking/campaign",
        ]
        with service.channel() as channel:
            summary = service.stub(channel).GetCampaignSummary(
                pb2.GetCampaignSummaryRequest(campaign_tracking_id=campaign)
            )
        assert summary.total_messages == 250
        assert {(count.status, count.messages) for count in summary.counts} == {
            (pb.MESSAGE_STATUS_DELIVERED, 80 + 5),
            (pb.MESSAGE_STATUS_SEEN, 80),
            (pb.MESSAGE_STATUS_FAILED, 80),
            (pb.MESSAGE_STATUS_UNDELIVERED, 5),
        }
        again = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)
        assert "250 messages seen, 0 new events" in again.stdout

    def test_without_credentials_it_says_what_is_missing(self, tmp_path: Path) -> None:
        result = subprocess.run(
            [executable(), "reconcile", "--campaign", "c", "--database", f"{tmp_path}/x.db"],
            capture_output=True, text=True, timeout=30,
            env={key: value for key, value in os.environ.items() if not key.startswith("ROUTEE_CALLBACKS_")},
        )  # fmt: skip
        assert result.returncode == 2
        assert "--routee-application-id" in result.stderr
