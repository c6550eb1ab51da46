"""End to end: Routee's inbound Viber messages (replies) on the real service, on both engines and with two
workers — kept, joined to the message they answer, streamed per campaign, resumable, deduplicated by content."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest

from conftest import StartService
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from support.fixtures import fixture_bodies, inbound_bodies
from support.network import CALLBACKS_PATH, INBOUND_PATH, post_callback
from support.service_process import OPEN, ServiceProcess, executable
from support.streams import StreamCollector

pytestmark = pytest.mark.e2e

CAMPAIGN_A = "c0ffee00-0000-4000-8000-0000000000a1"
MESSAGE_1 = "a1b2c3d4-0000-4000-8000-000000000001"


def post(service: ServiceProcess, path: str, body: bytes, source: str = "127.0.0.1") -> tuple[int, dict[str, object]]:
    answer = post_callback(service.http_port, body, path=path, source=source)
    return answer.status, answer.json()


def reply(number: int, campaign: str = CAMPAIGN_A) -> bytes:
    """The n-th reply of a conversation, answering message 1."""
    document = json.loads(inbound_bodies()["01-m1-reply-text.json"])
    document.update(message=f"reply {number}", sentDate=f"2024-05-01T11:{number // 60:02d}:{number % 60:02d}Z")
    document["campaignTrackingId"] = campaign
    return json.dumps(document).encode()


@pytest.fixture
def service(start_service: StartService, database: str) -> ServiceProcess:
    """The service on each engine in turn, with two workers (each follows the log; any may take a post)."""
    return start_service("--allowlist-host", "", "--allow-cidr", "127.0.0.1/32", "--workers", "2", database=database)


class TestReplies:
    def test_a_reply_is_joined_to_its_message_streamed_for_its_campaign_and_its_retry_is_a_duplicate(
        self, service: ServiceProcess
    ) -> None:
        campaign = StreamCollector(
            service.grpc_target, pb2.StreamInboundMessagesRequest(campaign_tracking_id=CAMPAIGN_A)
        )
        others = StreamCollector(
            service.grpc_target, pb2.StreamInboundMessagesRequest(campaign_tracking_id="someone-else")
        )
        statuses = StreamCollector(service.grpc_target, pb2.StreamStatusUpdatesRequest())
        try:
            assert post(service, CALLBACKS_PATH, fixture_bodies()["02-m1-delivered.json"])[0] == 200
            body = inbound_bodies()["01-m1-reply-text.json"]
            status, answer = post(service, INBOUND_PATH, body)
            assert (status, answer["status"]) == (200, "accepted")
            assert post(service, INBOUND_PATH, body) == (200, {"status": "duplicate"})
            (streamed,) = campaign.wait_for(1)
            assert (streamed.sequence, streamed.text) == (answer["sequence"], "YES please, keep me posted")
            assert streamed.raw_json == body.decode()
            response = service.get_status(MESSAGE_1)
            assert [(r.sequence, r.sender, r.text) for r in response.replies] == [
                (answer["sequence"], "+306900000001", "YES please, keep me posted")
            ]
            assert response.status_name == "Delivered"
            # The sentinel: a reply of the other campaign, posted after; once it arrives, the stream has had its
            # chance to receive the first one, and did not.
            sentinel, _ = post(service, INBOUND_PATH, reply(1, campaign="someone-else"))
            assert sentinel == 200
            assert [update.text for update in others.wait_for(1)] == ["reply 1"]
            assert [u.tracking_id for u in statuses.updates] == [MESSAGE_1], "replies are not status updates"
        finally:
            for stream in (campaign, others, statuses):
                stream.close()

    def test_a_stranger_gets_403_and_nothing_is_kept(self, service: ServiceProcess) -> None:
        assert post(service, CALLBACKS_PATH, fixture_bodies()["02-m1-delivered.json"])[0] == 200
        status, problem = post(service, INBOUND_PATH, inbound_bodies()["01-m1-reply-text.json"], source="127.0.0.9")
        assert (status, problem["reason"]) == (403, "source_not_allowed")
        assert list(service.get_status(MESSAGE_1).replies) == []

    def test_resuming_misses_nothing_while_replies_keep_arriving(self, service: ServiceProcess) -> None:
        """One stream is read for a while, cut, and resumed after the last sequence it got while replies are
        posted the whole time: together the two parts hold every reply once, in order."""
        total = 150
        statuses: list[int] = []

        def send() -> None:
            for number in range(total):
                statuses.append(post(service, INBOUND_PATH, reply(number))[0])
                if number % 20 == 0:  # A status callback now and then: the sequences are shared.
                    post(service, CALLBACKS_PATH, fixture_bodies()["01-m1-queued.json"])

        sender = threading.Thread(target=send)
        first = StreamCollector(
            service.grpc_target, pb2.StreamInboundMessagesRequest(campaign_tracking_id=CAMPAIGN_A, after_sequence=0)
        )
        sender.start()
        try:
            head = first.wait_for(30)
        finally:
            first.close()
        last = first.updates[-1].sequence
        second = StreamCollector(
            service.grpc_target,
            pb2.StreamInboundMessagesRequest(campaign_tracking_id=CAMPAIGN_A, after_sequence=last),
        )
        try:
            sender.join(60)
            assert statuses == [200] * total
            rest = second.wait_for(total - len(first.updates), timeout=20)
        finally:
            second.close()
        texts = [m.text for m in first.updates] + [m.text for m in rest]
        assert texts == [f"reply {number}" for number in range(total)]
        sequences = [m.sequence for m in first.updates + rest]
        assert sequences == sorted(set(sequences))
        assert head[0].sequence >= 1


class TestCommandLine:
    def test_simulate_sends_replies_and_watch_prints_them(self, start_service: StartService) -> None:
        service = start_service(*OPEN)
        watch = subprocess.Popen(
            [executable(), "watch", "--inbound", "--after-sequence", "0", "--grpc-target", service.grpc_target],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            result = subprocess.run(
                [
                    executable(), "simulate", "--url", f"http://127.0.0.1:{service.http_port}{CALLBACKS_PATH}",
                    "--messages", "40", "--replies", "5", "--duplicates", "--json", "--seed", "3",
                ],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            summary = json.loads(result.stdout)
            assert summary["replies"] == 5
            assert watch.stdout is not None
            lines = [watch.stdout.readline() for _ in range(5)]
        finally:
            watch.terminate()
            watch.communicate(timeout=10)
        referenced = [line.split()[1] for line in lines]
        assert all("from +3069" in line for line in lines), lines
        for tracking_id in referenced:
            replies = service.get_status(tracking_id).replies
            assert len(replies) == 1
            assert replies[0].direction == "Inbound"
