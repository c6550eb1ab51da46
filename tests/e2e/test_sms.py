"""End to end: SMS on the real service, on both engines and with one and two workers — a multipart SMS whose
parts arrive out of order and twice, one part undelivered, an inbound SMS on the inbound stream, and a campaign
of both channels posted by ``simulate``, summarised and streamed exactly."""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import grpc
import pytest

from conftest import StartService
from routee.callbacks.v1 import callback_pb2 as pb
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from routee.callbacks.v1 import message_status_service_pb2_grpc as pb2_grpc
from support.fixtures import inbound_bodies, sms_bodies, sms_inbound_bodies
from support.network import CALLBACKS_PATH, INBOUND_PATH, SMS_INBOUND_PATH, SMS_PATH, post_callback
from support.service_process import OPEN, ServiceProcess, executable
from support.streams import StreamCollector

pytestmark = pytest.mark.e2e

CAMPAIGN = "c0ffee00-0000-4000-8000-0000000000a1"
S1 = "5e1f0000-0000-4000-8000-000000000001"
S2 = "5e1f0000-0000-4000-8000-000000000002"
DELIVERED, UNDELIVERED = pb.MESSAGE_STATUS_DELIVERED, pb.MESSAGE_STATUS_UNDELIVERED


@pytest.fixture(params=["1", "2"], ids=["one-worker", "two-workers"])
def service(request: pytest.FixtureRequest, start_service: StartService, database: str) -> ServiceProcess:
    """The service on each engine, with one worker and with two (each follows the log; any may take a post)."""
    return start_service(*OPEN, "--workers", request.param, database=database)


def post(service: ServiceProcess, path: str, body: bytes) -> tuple[int, dict[str, object]]:
    answer = post_callback(service.http_port, body, path=path)
    return answer.status, answer.json()


class TestMultipartSms:
    def test_parts_out_of_order_and_twice_one_part_undelivered(self, service: ServiceProcess) -> None:
        """Each part's event is kept and streamed once, in sequence; a retry is a duplicate; the message's status
        follows its parts; the campaign counts messages, not parts."""
        stream = StreamCollector(service.grpc_target, pb2.StreamStatusUpdatesRequest(campaign_tracking_id=CAMPAIGN))
        order = [
            "03-s1-part3-delivered.json",
            "01-s1-part2-sent.json",
            "02-s1-part1-delivered.json",
            "01-s1-part2-sent.json",  # Routee's retry
            "06-s2-part2-undelivered-on-handset.json",
            "04-s1-part2-delivered.json",
            "05-s2-part1-delivered.json",
            "03-s1-part3-delivered.json",  # and another
        ]
        try:
            answers = [post(service, SMS_PATH, sms_bodies()[name]) for name in order]
            assert [status for status, _ in answers] == [200] * len(order)
            assert [answer["status"] for _, answer in answers].count("duplicate") == 2
            updates = stream.wait_for(6)
        finally:
            stream.close()
        assert len(updates) == 6, updates
        assert [u.sequence for u in updates] == sorted({u.sequence for u in updates})
        assert {(u.tracking_id, u.part, u.status_name) for u in updates} == {
            (S1, 3, "Delivered"),
            (S1, 2, "Sent"),
            (S1, 1, "Delivered"),
            (S1, 2, "DELIVERED"),
            (S2, 2, "Undelivered"),
            (S2, 1, "Delivered"),
        }
        assert all(u.channel == pb.CHANNEL_SMS and u.sms_callback.message_id == u.tracking_id for u in updates)
        assert [u.message_status for u in updates if u.tracking_id == S1][-1] == DELIVERED
        s1, s2 = service.get_status(S1), service.get_status(S2)
        assert (s1.channel, s1.status, s2.status) == (pb.CHANNEL_SMS, DELIVERED, UNDELIVERED)
        assert [(p.part, p.status, p.sms_id) for p in s1.parts] == [
            (1, DELIVERED, "5e1f-s1-p1"),
            (2, DELIVERED, "5e1f-s1-p2"),
            (3, DELIVERED, "5e1f-s1-p3"),
        ]
        assert s2.sms_callback.status.reason.detailed_status == "Undelivered on Handset"
        assert not s1.HasField("callback")
        with service.channel() as channel:
            summary = pb2_grpc.MessageStatusServiceStub(channel).GetCampaignSummary(
                pb2.GetCampaignSummaryRequest(campaign_tracking_id=CAMPAIGN), timeout=10
            )
        assert {(c.status, c.messages) for c in summary.counts} == {(DELIVERED, 1), (UNDELIVERED, 1)}

    def test_an_inbound_sms_reaches_the_inbound_stream_of_its_channel(self, service: ServiceProcess) -> None:
        """An inbound SMS is streamed to SMS and unfiltered inbound streams, not to Viber-only ones (which get the
        Viber reply posted after it, so they had their chance); its retry is a duplicate."""
        every = StreamCollector(service.grpc_target, pb2.StreamInboundMessagesRequest())
        viber = StreamCollector(service.grpc_target, pb2.StreamInboundMessagesRequest(channels=[pb.CHANNEL_VIBER]))
        sms = StreamCollector(service.grpc_target, pb2.StreamInboundMessagesRequest(channels=[pb.CHANNEL_SMS]))
        try:
            body = sms_inbound_bodies()["01-mo-stop.json"]
            assert post(service, SMS_INBOUND_PATH, body)[1]["status"] == "accepted"
            assert post(service, SMS_INBOUND_PATH, body)[1]["status"] == "duplicate"
            assert post(service, INBOUND_PATH, inbound_bodies()["01-m1-reply-text.json"])[0] == 200
            [viber_reply] = viber.wait_for(1)
            [sms_message] = sms.wait_for(1)
            assert len(every.wait_for(2)) == 2
        finally:
            for stream in (every, viber, sms):
                stream.close()
        assert viber_reply.channel == pb.CHANNEL_VIBER
        assert (sms_message.channel, sms_message.message_id, sms_message.text, sms_message.sender) == (
            pb.CHANNEL_SMS,
            "mo000000-0000-4000-8000-000000000001",
            "STOP",
            "+306900000101",
        )

    def test_a_channel_filter_this_server_does_not_know_is_refused(self, service: ServiceProcess) -> None:
        request = pb2.StreamStatusUpdatesRequest(channels=[pb.CHANNEL_UNSPECIFIED])
        with service.channel() as channel:
            stream = pb2_grpc.MessageStatusServiceStub(channel).StreamStatusUpdates(request, timeout=5)
            with pytest.raises(grpc.RpcError) as raised:
                next(iter(stream))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


class TestMixedCampaign:
    def test_half_viber_half_multipart_sms_is_counted_streamed_and_read_exactly(self, service: ServiceProcess) -> None:
        """``simulate --channel mixed`` with retries, shuffled: the summary has the counts simulate expects, a
        stream from the start carries every distinct event once in sequence, and each message's status read alone
        is the one its page lists."""
        campaign = "c0ffee00-0000-4000-8000-0000000000d4"
        result = subprocess.run(
            [
                executable(), "simulate", "--url", f"http://127.0.0.1:{service.http_port}{CALLBACKS_PATH}",
                "--channel", "mixed", "--campaign", campaign, "--messages", "120", "--seed", "11",
                "--duplicates", "--shuffle", "--concurrency", "8", "--json",
            ],
            capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        simulated = json.loads(result.stdout)
        assert set(simulated["outcomes"]) <= {"accepted", "duplicate"}
        stream = StreamCollector(
            service.grpc_target, pb2.StreamStatusUpdatesRequest(campaign_tracking_id=campaign, after_sequence=0)
        )
        try:
            updates = stream.wait_for(simulated["distinct_events"], timeout=30)
        finally:
            stream.close()
        assert len(updates) == simulated["distinct_events"]
        assert [u.sequence for u in updates] == sorted({u.sequence for u in updates})
        assert Counter(u.channel for u in updates).keys() == {pb.CHANNEL_VIBER, pb.CHANNEL_SMS}
        with service.channel() as channel:
            stub = pb2_grpc.MessageStatusServiceStub(channel)
            summary = stub.GetCampaignSummary(pb2.GetCampaignSummaryRequest(campaign_tracking_id=campaign), timeout=10)
            counts = {
                pb.MessageStatus.Name(c.status).removeprefix("MESSAGE_STATUS_").lower(): c.messages
                for c in summary.counts
            }
            assert counts == simulated["expected_statuses"]
            listed = stub.ListMessageStatuses(
                pb2.ListMessageStatusesRequest(
                    campaign_tracking_id=campaign, channels=[pb.CHANNEL_SMS], page_size=1000
                ),
                timeout=10,
            ).messages
            assert len(listed) == simulated["sms_messages"]
            found = stub.BatchGetMessageStatuses(
                pb2.BatchGetMessageStatusesRequest(tracking_ids=[m.tracking_id for m in listed], include_history=True),
                timeout=10,
            ).statuses
        for alone, on_page in zip(found, listed, strict=True):
            assert (alone.status, alone.channel) == (on_page.status, pb.CHANNEL_SMS)
            assert len(alone.parts) == alone.sms_callback.parts or alone.status != DELIVERED
