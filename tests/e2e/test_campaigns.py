"""End to end: campaign questions on the real service, on both engines — counts that match what was posted
(late, out-of-order and duplicate callbacks included), counts kept live from a summary and a stream, pages that
stay stable while callbacks keep arriving, batch reads in the order asked."""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter

import grpc
import pytest

from conftest import StartService
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from routee.callbacks.v1 import message_status_service_pb2_grpc as pb2_grpc
from support.fixtures import fixture
from support.network import CALLBACKS_PATH, post_callback
from support.service_process import OPEN, ServiceProcess, executable
from support.streams import StreamCollector

pytestmark = pytest.mark.e2e

CAMPAIGN = "c0ffee00-0000-4000-8000-0000000000c3"


def simulate(service: ServiceProcess, messages: int, seed: int, *extra: str) -> dict[str, object]:
    result = subprocess.run(
        [
            executable(), "simulate", "--url", f"http://127.0.0.1:{service.http_port}{CALLBACKS_PATH}",
            "--campaign", CAMPAIGN, "--messages", str(messages), "--seed", str(seed), "--concurrency", "8",
            "--json", *extra,
        ],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    summary: dict[str, object] = json.loads(result.stdout)
    return summary


def walk(channel: grpc.Channel, page_size: int = 100) -> list[pb2.GetMessageStatusResponse]:
    """Every page of the campaign, in order."""
    stub = pb2_grpc.MessageStatusServiceStub(channel)
    request = pb2.ListMessageStatusesRequest(campaign_tracking_id=CAMPAIGN, page_size=page_size)
    messages: list[pb2.GetMessageStatusResponse] = []
    while True:
        page = stub.ListMessageStatuses(request, timeout=10)
        messages += page.messages
        if not page.next_page_token:
            return messages
        request.page_token = page.next_page_token


def summary(channel: grpc.Channel) -> pb2.GetCampaignSummaryResponse:
    response: pb2.GetCampaignSummaryResponse = pb2_grpc.MessageStatusServiceStub(channel).GetCampaignSummary(
        pb2.GetCampaignSummaryRequest(campaign_tracking_id=CAMPAIGN), timeout=10
    )
    return response


@pytest.fixture
def service(start_service: StartService, database: str) -> ServiceProcess:
    return start_service(*OPEN, database=database)


class TestCampaignQuestions:
    def test_counts_match_what_was_posted_and_batch_get_keeps_order(self, service: ServiceProcess) -> None:
        """A shuffled campaign with retries, then a late callback older than a message's current status: the
        summary counts each message once, by the status the list shows for it; the CLI prints the same."""
        simulate(service, 300, 5, "--duplicates", "--shuffle")
        with service.channel() as channel:
            listed = walk(channel)
            seen = next(message for message in listed if message.status_name.lower() == "seen")
            late = fixture("01-m1-queued.json")
            late.update(trackingId=seen.tracking_id, campaignTrackingId=CAMPAIGN)
            late["status"]["updatedDate"] = "2001-01-01T00:00:00Z"
            assert post_callback(service.http_port, json.dumps(late).encode()).status == 200
            answer = summary(channel)
            wanted = [listed[7].tracking_id, "never-sent", listed[0].tracking_id]
            batch = pb2_grpc.MessageStatusServiceStub(channel).BatchGetMessageStatuses(
                pb2.BatchGetMessageStatusesRequest(tracking_ids=wanted), timeout=10
            )
        assert len(listed) == 300
        assert len({message.tracking_id for message in listed}) == 300
        assert {count.status: count.messages for count in answer.counts} == Counter(m.status for m in listed)
        assert answer.total_messages == 300
        assert answer.first_update_time.ToJsonString() == "2001-01-01T00:00:00Z", "the late event is the earliest"
        assert [status.tracking_id for status in batch.statuses] == [wanted[0], wanted[2]]
        assert list(batch.missing_tracking_ids) == ["never-sent"]
        printed = subprocess.run(
            [executable(), "campaign", CAMPAIGN, "--json", "--grpc-target", service.grpc_target],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert json.loads(printed.stdout)["totalMessages"] == "300"
        listing = subprocess.run(
            [executable(), "campaign", CAMPAIGN, "--list", "--status", "seen", "--grpc-target", service.grpc_target],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        seen_count = sum(count.messages for count in answer.counts if count.status == seen.status)
        assert len(listing.stdout.splitlines()) == seen_count

    def test_a_summary_and_a_stream_from_its_sequence_give_exact_live_counts(self, service: ServiceProcess) -> None:
        simulate(service, 100, 1)
        with service.channel() as channel:
            start = summary(channel)
        counts = Counter({count.status: count.messages for count in start.counts})
        stream = StreamCollector(
            service.grpc_target,
            pb2.StreamStatusUpdatesRequest(campaign_tracking_id=CAMPAIGN, after_sequence=start.sequence),
        )
        try:
            posted = simulate(service, 200, 2, "--duplicates", "--shuffle")
            updates = stream.wait_for(int(str(posted["distinct_events"])), timeout=30)
        finally:
            stream.close()
        for update in updates:
            if update.is_current:
                counts[update.previous_status] -= 1 if update.previous_status else 0
                counts[update.status] += 1
        with service.channel() as channel:
            end = summary(channel)
        assert +counts == Counter({count.status: count.messages for count in end.counts})
        assert end.total_messages == 300

    def test_pages_stay_stable_while_callbacks_keep_arriving(self, service: ServiceProcess) -> None:
        """2 000 messages walked in pages of 100 while 1 000 more messages (and their status changes) arrive:
        each of the 2 000 is listed exactly once."""
        simulate(service, 2000, 3)
        with service.channel() as channel:
            before = {message.tracking_id for message in walk(channel, page_size=1000)}
        assert len(before) == 2000
        arriving = threading.Thread(target=simulate, args=(service, 1000, 4, "--shuffle"))
        arriving.start()
        try:
            with service.channel() as channel:
                listed = [message.tracking_id for message in walk(channel)]
        finally:
            arriving.join(300)
        assert len(listed) == len(set(listed)), "a message was listed twice"
        assert before <= set(listed), "a message that existed at the start was missed"
        assert listed == sorted(listed)
