"""SMS: the rule that gives a multipart SMS one status, reading Routee's SMS bodies, and planning their events."""

from __future__ import annotations

import json

import pytest

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.errors import InvalidCallbackError
from service.domain.rules import MASKED, SMS, sms_event_key, sms_message_status
from service.routee.privacy import erase_callback, minimise_callback
from service.routee.sms import parse_sms, parse_sms_inbound
from service.store.plan import plan_status
from support.fixtures import sms_bodies, sms_inbound_bodies

QUEUED, SENT, DELIVERED = pb.MESSAGE_STATUS_QUEUED, pb.MESSAGE_STATUS_SENT, pb.MESSAGE_STATUS_DELIVERED
UNDELIVERED, FAILED = pb.MESSAGE_STATUS_UNDELIVERED, pb.MESSAGE_STATUS_FAILED


def report(message_id: str, part: int, parts: int, name: str, date: str, campaign: str = "c1") -> pb.SmsCallback:
    body = {
        "messageId": message_id,
        "part": part,
        "parts": parts,
        "campaignTrackingId": campaign,
        "status": {"name": name, "updatedDate": date},
    }
    callback = parse_sms(json.dumps(body).encode()).callback
    assert isinstance(callback, pb.SmsCallback)
    return callback


class TestMessageStatus:
    """A multipart SMS's one status, from its parts' current statuses."""

    def test_delivered_when_every_part_is(self) -> None:
        """All parts delivered: delivered; one part not yet heard of counts as queued."""
        assert sms_message_status({1: (DELIVERED, 1), 2: (DELIVERED, 2), 3: (DELIVERED, 3)}, 3) == DELIVERED
        assert sms_message_status({1: (DELIVERED, 1), 3: (DELIVERED, 3)}, 3) == QUEUED

    def test_otherwise_the_least_advanced_part(self) -> None:
        """Parts sent and delivered: sent; a part not heard of keeps it queued."""
        assert sms_message_status({1: (DELIVERED, 5), 2: (SENT, 1)}, 2) == SENT
        assert sms_message_status({2: (SENT, 1)}, 2) == QUEUED

    def test_a_part_that_failed_for_good_fails_the_message_as_the_first_failure(self) -> None:
        """As soon as one part fails, the message fails the way the earliest failure did, whatever else is
        delivered."""
        assert sms_message_status({1: (DELIVERED, 1), 2: (UNDELIVERED, 9)}, 3) == UNDELIVERED
        assert sms_message_status({1: (FAILED, 5), 2: (UNDELIVERED, 3)}, 2) == UNDELIVERED
        assert sms_message_status({1: (FAILED, 3), 2: (UNDELIVERED, 3)}, 2) == FAILED

    def test_a_count_below_the_parts_heard_of_does_not_hide_them(self) -> None:
        """Part 3 of a message said to have 2 parts still counts."""
        assert sms_message_status({1: (DELIVERED, 1), 2: (DELIVERED, 1), 3: (SENT, 1)}, 2) == SENT

    def test_sent_ranks_between_queued_and_delivered(self) -> None:
        """SENT is more advanced than QUEUED, less than DELIVERED."""
        assert sms_message_status({1: (QUEUED, 1), 2: (SENT, 1)}, 2) == QUEUED
        assert sms_message_status({1: (DELIVERED, 1), 2: (SENT, 1)}, 2) == SENT


class TestParse:
    """Reading SMS delivery reports and inbound SMS."""

    @pytest.mark.parametrize("name", sorted(sms_bodies()))
    def test_every_fixture_is_read_whole(self, name: str) -> None:
        """Each fixture report is read without adjustment, its raw body kept."""
        body = sms_bodies()[name]
        parsed = parse_sms(body)
        assert parsed.adjusted == []
        assert isinstance(parsed.callback, pb.SmsCallback)
        assert parsed.callback.raw_json == body.decode()
        assert 1 <= parsed.callback.part <= parsed.callback.parts

    def test_the_fields_land_where_the_proto_says(self) -> None:
        """Routee's names map to the proto's fields; Sent is SENT."""
        callback = parse_sms(sms_bodies()["01-s1-part2-sent.json"]).callback
        assert isinstance(callback, pb.SmsCallback)
        assert (callback.message_id, callback.sms_id, callback.part, callback.parts) == (
            "5e1f0000-0000-4000-8000-000000000001",
            "5e1f-s1-p2",
            2,
            3,
        )
        assert (callback.operator, callback.recipient, callback.latency, callback.price) == (
            "Cosmote",
            "+306900000101",
            1240,
            0.035,
        )
        assert callback.status.status == SENT
        assert callback.text.startswith("Spring sale")

    def test_a_report_without_a_part_is_part_one_of_one(self) -> None:
        callback = parse_sms(sms_bodies()["07-s3-single-no-part-queued.json"]).callback
        assert isinstance(callback, pb.SmsCallback)
        assert (callback.part, callback.parts) == (1, 1)

    @pytest.mark.parametrize("part", [0, 256, "two", "2", 1.5, True])
    def test_a_part_that_names_no_part_cannot_be_identified(self, part: object) -> None:
        """The part is in the report's identity: one that is no part number is refused, naming it."""
        body = {"messageId": "m", "part": part, "status": {"name": "Sent", "updatedDate": "2024-05-01T10:00:00Z"}}
        with pytest.raises(InvalidCallbackError, match="part"):
            parse_sms(json.dumps(body).encode())

    def test_a_count_written_as_text_is_the_number_and_a_bad_count_is_dropped(self) -> None:
        body = {
            "messageId": "m",
            "part": 2,
            "parts": "many",
            "status": {"name": "Sent", "updatedDate": "2024-05-01T10:00:00Z"},
        }
        parsed = parse_sms(json.dumps(body).encode())
        assert isinstance(parsed.callback, pb.SmsCallback)
        assert (parsed.callback.part, parsed.callback.parts) == (2, 2)
        assert parsed.adjusted == [("sms.parts", "dropped")]

    def test_duplicates_are_per_part(self) -> None:
        """The same status of two parts is two events; the same part's in another case and precision is one."""
        first = sms_event_key(report("m", 1, 2, "Delivered", "2024-05-01T10:00:00Z"))
        other_part = sms_event_key(report("m", 2, 2, "Delivered", "2024-05-01T10:00:00Z"))
        again = sms_event_key(report("m", 1, 2, "DELIVERED", "2024-05-01T10:00:00.000Z"))
        assert first == again
        assert first != other_part

    @pytest.mark.parametrize("name", sorted(sms_inbound_bodies()))
    def test_inbound_sms_is_an_inbound_message_of_channel_sms(self, name: str) -> None:
        body = sms_inbound_bodies()[name]
        parsed = parse_sms_inbound(body)
        message = parsed.message
        assert parsed.adjusted == []
        assert (message.channel, message.direction, message.recipient) == (SMS, "Inbound", "12345")
        assert message.message_id.startswith("mo")
        assert message.sender.startswith("+30")
        assert message.send_time.seconds > 0

    @pytest.mark.parametrize("missing", ["messageId", "from", "receivedDate"])
    def test_an_inbound_sms_without_its_identity_is_refused(self, missing: str) -> None:
        document = json.loads(sms_inbound_bodies()["01-mo-stop.json"])
        del document[missing]
        with pytest.raises(InvalidCallbackError, match=missing):
            parse_sms_inbound(json.dumps(document).encode())


class TestPlan:
    """Planning a batch of SMS reports."""

    def test_parts_out_of_order_and_twice_give_each_event_once_and_the_message_its_status(self) -> None:
        """Part 2 sent, part 1 delivered, part 2 again, parts 3 and 2 delivered: four events; the message is
        current only when its status changes."""
        reports = [
            report("m", 2, 3, "Sent", "2024-05-01T10:00:01Z"),
            report("m", 1, 3, "Delivered", "2024-05-01T10:00:03Z"),
            report("m", 2, 3, "SENT", "2024-05-01T10:00:01.000Z"),
            report("m", 3, 3, "Delivered", "2024-05-01T10:00:04Z"),
            report("m", 2, 3, "Delivered", "2024-05-01T10:00:05Z"),
        ]
        plan = plan_status(
            reports, [sms_event_key(r) for r in reports], existing=set(), current={}, last_sequence=0, receive_us=1
        )
        events = [result for result in plan.results]
        assert events[2] is None
        kept = [event for event in events if event is not None]
        assert [(e.part, e.status, e.message_status, e.is_current) for e in kept] == [
            (2, SENT, QUEUED, True),  # parts 1 and 3 not heard of: queued
            (1, DELIVERED, QUEUED, False),
            (3, DELIVERED, SENT, True),  # part 2 is the least advanced
            (2, DELIVERED, DELIVERED, True),
        ]
        assert [(e.previous_status) for e in kept] == [0, 0, QUEUED, SENT]
        assert plan.counts == {("c1", DELIVERED): 1}
        assert {key: part.status for key, part in plan.parts.items()} == {
            ("m", 1): DELIVERED,
            ("m", 2): DELIVERED,
            ("m", 3): DELIVERED,
        }

    def test_a_late_older_report_of_a_part_does_not_move_it_back(self) -> None:
        """Part 1 delivered, then its older Sent: stored, not current for the part or the message."""
        reports = [
            report("m", 1, 1, "Delivered", "2024-05-01T10:00:05Z"),
            report("m", 1, 1, "Sent", "2024-05-01T10:00:01Z"),
        ]
        plan = plan_status(
            reports, [sms_event_key(r) for r in reports], existing=set(), current={}, last_sequence=0, receive_us=1
        )
        late = plan.results[1]
        assert late is not None
        assert (late.is_current, late.message_status) == (False, DELIVERED)
        assert plan.parts[("m", 1)].status == DELIVERED


class TestPersonalData:
    """What --store-personal-data and forget keep of an SMS."""

    def test_masked_keeps_no_text_and_the_number_masked(self) -> None:
        callback = parse_sms(sms_bodies()["02-s1-part1-delivered.json"]).callback
        minimise_callback(callback, MASKED)
        assert isinstance(callback, pb.SmsCallback)
        assert (callback.text, callback.recipient) == ("", "+30*******101")
        kept = json.loads(callback.raw_json)
        assert "message" not in kept
        assert kept["to"] == "+30*******101"
        assert kept["messageId"] == callback.message_id

    def test_forget_erases_the_recipient_of_a_report(self) -> None:
        callback = parse_sms(sms_bodies()["02-s1-part1-delivered.json"]).callback
        erased = erase_callback(callback.SerializeToString(), "+306900000101", sms=True)
        assert erased is not None
        kept = pb.SmsCallback.FromString(erased)
        assert kept.recipient == ""
        assert "+306900000101" not in kept.raw_json
        assert erase_callback(callback.SerializeToString(), "+306900000999", sms=True) is None
