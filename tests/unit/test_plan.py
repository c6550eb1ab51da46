"""The planner of a batch of callbacks, without a database: duplicates, sequences, the current status."""

from __future__ import annotations

from collections.abc import Sequence

from http_ingress.schemas import parse_callback
from routee.callbacks.v1 import callback_pb2 as pb
from service.store.plan import Current, StatusPlan, event_key
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
        assert plan.replaced == {"m": seen_at_ten}

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
