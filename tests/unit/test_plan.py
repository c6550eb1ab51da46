"""The planner of a batch, without a database: duplicates, sequences, the current status; inbound messages and
the key that recognises their retries."""

from __future__ import annotations

from collections.abc import Sequence

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.rules import event_key, inbound_key
from service.routee.callbacks import parse_callback, parse_inbound
from service.store.plan import Current, StatusPlan, plan_inbound
from service.store.plan import plan_status as plan_with_keys


def callback(tracking_id: str, name: str, date: str, campaign: str = "c1") -> pb.ViberCallback:
    return parse_callback(
        f'{{"trackingId": "{tracking_id}", "campaignTrackingId": "{campaign}",'
        f' "status": {{"name": "{name}", "updatedDate": "{date}"}}}}'.encode()
    ).callback


def plan_status(callbacks: Sequence[pb.ViberCallback], **state: object) -> StatusPlan:
    """Plan with the keys computed as the engines compute them."""
    return plan_with_keys(callbacks, [event_key(c) for c in callbacks], **state)  # type: ignore[arg-type]


class TestPlanStatus:
    """Planning one batch."""

    def test_sequences_follow_the_last_in_batch_order(self) -> None:
        """New events take the sequences after the last one, in the order of the batch."""
        plan = plan_status(
            [callback("a", "Queued", "2024-05-01T10:00:00Z"), callback("b", "Queued", "2024-05-01T10:00:00Z")],
            existing=set(),
            current={},
            last_sequence=41,
            receive_us=7,
        )
        assert [event.sequence for event in plan.results if event] == [42, 43]
        assert plan.last_sequence == 43
        assert all(event.receive_us == 7 for event in plan.results if event)

    def test_stored_and_repeated_events_are_duplicates(self) -> None:
        """An event already stored, or earlier in the same batch (in any case), gets no sequence."""
        stored = callback("a", "Queued", "2024-05-01T10:00:00Z")
        plan = plan_status(
            [stored, callback("b", "Seen", "2024-05-01T10:00:00Z"), callback("b", "SEEN", "2024-05-01T10:00:00.000Z")],
            existing={event_key(stored)},
            current={},
            last_sequence=0,
            receive_us=0,
        )
        assert [None if event is None else event.sequence for event in plan.results] == [None, 1, None]

    def test_a_new_event_must_beat_the_stored_current_status(self) -> None:
        """Against the stored current status: an older date is history only; an equal date and rank wins."""
        seen_at_ten = Current("c1", pb.MESSAGE_STATUS_SEEN, 1_714_557_600_000_000, 4, 5)
        plan = plan_status(
            [
                callback("m", "Delivered", "2024-05-01T09:59:00Z"),  # older: not current
                callback("m", "Seen", "2024-05-01T10:00:00.5Z"),  # later: current
            ],
            existing=set(),
            current={"m": seen_at_ten},
            last_sequence=5,
            receive_us=0,
        )
        assert [event.is_current for event in plan.results if event] == [False, True]
        assert plan.messages["m"].sequence == 7
        assert [event.previous_status for event in plan.results if event] == [0, pb.MESSAGE_STATUS_SEEN]
        assert plan.counts == {}, "Seen replaced by Seen: the counts do not change"

    def test_messages_lists_only_those_whose_current_status_changed(self) -> None:
        """A late event changes no message row."""
        plan = plan_status(
            [callback("m", "Queued", "2024-05-01T09:00:00Z")],
            existing=set(),
            current={"m": Current("c1", pb.MESSAGE_STATUS_SEEN, 1_714_557_600_000_000, 4, 5)},
            last_sequence=5,
            receive_us=0,
        )
        assert plan.messages == {}
        assert len(plan.events) == 1


def reply(text: str, *, sender: str = "+306900000000", sent: str = "2024-05-01T10:01:00Z") -> pb.InboundMessage:
    return parse_inbound(
        f'{{"from": "{sender}", "to": "s", "message": "{text}", "sentDate": "{sent}",'
        ' "campaignTrackingId": "c1", "referenceTrackingId": "m1", "campaignName": "Spring"}'.encode()
    ).message


class TestCounts:
    """What a batch changes in the number of messages per campaign and current status."""

    def test_a_new_message_and_a_changed_one_with_several_changes_in_the_batch(self) -> None:
        queued_before = Current("c1", pb.MESSAGE_STATUS_QUEUED, 1_714_557_600_000_000, 1, 3)
        plan = plan_status(
            [
                callback("new", "Queued", "2024-05-01T10:00:00Z"),
                callback("new", "Delivered", "2024-05-01T10:00:01Z"),  # Counted once, as Delivered.
                callback("old", "Delivered", "2024-05-01T10:00:02Z"),
                callback("old", "Seen", "2024-05-01T10:00:03Z"),
                callback("old", "Queued", "2024-05-01T09:00:00Z"),  # Late: history only.
                callback("other", "Failed", "2024-04-30T10:00:00Z", campaign="c2"),
            ],
            existing=set(),
            current={"old": queued_before},
            last_sequence=3,
            receive_us=0,
        )
        assert plan.counts == {
            ("c1", pb.MESSAGE_STATUS_DELIVERED): 1,
            ("c1", pb.MESSAGE_STATUS_QUEUED): -1,
            ("c1", pb.MESSAGE_STATUS_SEEN): 1,
            ("c2", pb.MESSAGE_STATUS_FAILED): 1,
        }
        assert [(event.tracking_id, event.previous_status) for event in plan.results if event] == [
            ("new", 0),
            ("new", pb.MESSAGE_STATUS_QUEUED),
            ("old", pb.MESSAGE_STATUS_QUEUED),
            ("old", pb.MESSAGE_STATUS_DELIVERED),
            ("old", 0),
            ("other", 0),
        ]
        assert plan.campaign_times == {
            "c1": (1_714_554_000_000_000, 1_714_557_603_000_000),
            "c2": (1_714_471_200_000_000, 1_714_471_200_000_000),
        }


class TestInboundKey:
    """An inbound message has no id: a retry is recognised by who sent what, when, in answer to what."""

    def test_a_retry_has_the_same_key_whatever_else_changed(self) -> None:
        """Routee may post the same reply with other secondary fields (a label renamed): still the same reply."""
        changed = reply("yes")
        changed.campaign_name, changed.label, changed.raw_json = "Renamed", "vip", "{}"
        assert inbound_key(changed) == inbound_key(reply("yes"))

    def test_other_text_sender_or_time_is_another_reply(self) -> None:
        keys = {
            inbound_key(reply("yes")),
            inbound_key(reply("no")),
            inbound_key(reply("yes", sender="+306911111111")),
            inbound_key(reply("yes", sent="2024-05-01T10:01:00.001Z")),
        }
        assert len(keys) == 4


class TestPlanInbound:
    def test_sequences_follow_duplicates_get_none_and_the_stored_message_is_complete(self) -> None:
        messages = [reply("yes"), reply("no"), reply("yes")]
        stored_before = inbound_key(reply("maybe"))
        plan = plan_inbound(
            [*messages, reply("maybe")],
            [inbound_key(m) for m in [*messages, reply("maybe")]],
            existing={stored_before},
            last_sequence=10,
            receive_us=1_714_557_600_000_000,
        )
        assert [entry.sequence if entry else None for entry in plan.results] == [11, 12, None, None]
        assert plan.last_sequence == 12
        first = pb.InboundMessage.FromString(plan.entries[0].entry.message)
        assert (first.sequence, first.text, first.receive_time.ToMicroseconds()) == (11, "yes", 1_714_557_600_000_000)
        assert (plan.entries[0].entry.campaign_tracking_id, plan.entries[0].entry.reference_tracking_id) == ("c1", "m1")
        assert messages[0].sequence == 0, "the caller's message is not changed"
