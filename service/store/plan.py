"""Plans a batch without a database: which callbacks and inbound messages are duplicates, which sequence each
new entry gets, and which event becomes its message's current status (for an SMS: its part's, and what the
parts make the message's). Engines read what the plan needs, then write what it says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.entries import StoredEvent, StoredInbound
from service.domain.rules import (
    FROM_CALLBACK,
    SMS,
    VIBER,
    EventKey,
    lifecycle_rank,
    precedence,
    sms_message_status,
)
from service.store import AppendInbound, AppendStatus, Job, Release


class Current(NamedTuple):
    """A message's current status as stored: what a new event must beat to replace it."""

    campaign_tracking_id: str
    status: int
    update_us: int
    rank: int
    sequence: int
    channel: int = VIBER


class PartCurrent(NamedTuple):
    """An SMS part's current status as stored, and how many parts its message has by its report."""

    status: int
    update_us: int
    rank: int
    sequence: int
    parts: int
    sms_id: str = ""
    status_name: str = ""


#: An SMS's parts by part number.
Parts = dict[int, PartCurrent]


class NewEvent(NamedTuple):
    """An event to insert: the stored event and the two columns only the store needs."""

    event: StoredEvent
    status_key: str
    rank: int


@dataclass(slots=True)
class StatusPlan:
    """What to write for a batch of callbacks."""

    #: Per callback, in batch order: its new event, or None for a duplicate.
    results: list[StoredEvent | None] = field(default_factory=list)
    #: New events, in sequence order.
    events: list[NewEvent] = field(default_factory=list)
    #: The messages whose current status changes, with their new current status.
    messages: dict[str, Current] = field(default_factory=dict)
    #: The SMS parts whose current status changes, by (tracking id, part).
    parts: dict[tuple[str, int], PartCurrent] = field(default_factory=dict)
    #: How the number of messages per (campaign, current status) changes; zeros left out.
    counts: dict[tuple[str, int], int] = field(default_factory=dict)
    #: Per campaign with new events, the earliest and latest ``updatedDate`` among them.
    campaign_times: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: The greatest sequence after the batch.
    last_sequence: int = 0


def plan_status(
    callbacks: Sequence[pb.ViberCallback | pb.SmsCallback],
    keys: Sequence[EventKey],
    *,
    existing: set[EventKey],
    current: Mapping[str, Current],
    last_sequence: int,
    receive_us: int,
    sources: Sequence[int] = (),
    parts: Mapping[str, Parts] | None = None,
) -> StatusPlan:
    """Plan a batch; ``keys`` are the callbacks' event keys, ``sources`` where each came from (all callbacks when
    empty), ``parts`` the stored parts of the batch's SMS.

    Sequences follow ``last_sequence`` in batch order; duplicates (already stored, or earlier in the batch) get
    none. A new event becomes current when its precedence beats the message's current event; being stored later,
    it wins every tie. An SMS report becomes its part's current status by the same rule, and its message's when
    the parts then give the message another status (``sms_message_status``).
    """
    plan = StatusPlan(last_sequence=last_sequence)
    seen = set(existing)
    state = dict(current)
    sms_parts = {tracking_id: dict(stored) for tracking_id, stored in (parts or {}).items()}
    for index, (callback, key) in enumerate(zip(callbacks, keys, strict=True)):
        if key in seen:
            plan.results.append(None)
            continue
        seen.add(key)
        plan.last_sequence += 1
        source = sources[index] if sources else FROM_CALLBACK
        before = state.get(key[0])
        if isinstance(callback, pb.SmsCallback):
            message_parts = sms_parts.setdefault(key[0], {})
            new = _new_sms_event(callback, key, plan.last_sequence, before, message_parts, receive_us, source)
            part = message_parts.get(new.event.part)
            if part is not None and part.sequence == new.event.sequence:
                plan.parts[(key[0], new.event.part)] = part
        else:
            new = _new_event(callback, key, plan.last_sequence, before, receive_us, source)
        plan.events.append(new)
        plan.results.append(new.event)
        _add_event(plan, new.event)
        if new.event.is_current:
            state[key[0]] = plan.messages[key[0]]
    _count_messages(plan, current)
    return plan


def _new_event(
    callback: pb.ViberCallback, key: EventKey, sequence: int, before: Current | None, receive_us: int, source: int
) -> NewEvent:
    """The event a callback makes at ``sequence``; current when it beats the message's current event ``before``."""
    _, _, update_us = key
    status = callback.status.status
    rank = lifecycle_rank(status)
    is_current = before is None or precedence(update_us, rank, sequence) > precedence(
        before.update_us, before.rank, before.sequence
    )
    message_status = status if is_current or before is None else before.status
    return _event(
        callback, key, sequence, before, is_current, receive_us, source, channel=VIBER, part=0, now=message_status
    )


def _new_sms_event(
    callback: pb.SmsCallback,
    key: EventKey,
    sequence: int,
    before: Current | None,
    parts: Parts,
    receive_us: int,
    source: int,
) -> NewEvent:
    """The event an SMS report makes at ``sequence``: its part's current status when it beats the part's current
    event (``parts`` updated), and current for its message when the parts then give the message another status."""
    _, _, update_us = key
    status, part = callback.status.status, callback.part or 1
    rank = lifecycle_rank(status)
    stored = parts.get(part)
    if stored is None or precedence(update_us, rank, sequence) > precedence(
        stored.update_us, stored.rank, stored.sequence
    ):
        parts[part] = PartCurrent(
            status, update_us, rank, sequence, callback.parts or 1, callback.sms_id, callback.status.name
        )
    count = max(callback.parts or 1, *(current.parts for current in parts.values()))
    message_status = sms_message_status({number: (now.status, now.update_us) for number, now in parts.items()}, count)
    is_current = before is None or message_status != before.status
    return _event(
        callback, key, sequence, before, is_current, receive_us, source, channel=SMS, part=part, now=message_status
    )


def _event(
    callback: pb.ViberCallback | pb.SmsCallback,
    key: EventKey,
    sequence: int,
    before: Current | None,
    is_current: bool,
    receive_us: int,
    source: int,
    *,
    channel: int,
    part: int,
    now: int,
) -> NewEvent:
    """The stored event of a callback, of a channel (and an SMS's part), whose message has status ``now`` after it
    and ``before``'s before it."""
    tracking_id, status_key, update_us = key
    status = callback.status.status
    event = StoredEvent(
        sequence,
        tracking_id,
        callback.campaign_tracking_id,
        status,
        callback.status.name,
        update_us,
        receive_us,
        is_current,
        callback.SerializeToString(),
        before.status if is_current and before is not None else 0,
        source,
        channel,
        part,
        now,
    )
    return NewEvent(event, status_key, lifecycle_rank(status))


def _add_event(plan: StatusPlan, event: StoredEvent) -> None:
    """Note a new event in its campaign's times, and as its message's current status when it is."""
    campaign, update_us = event.campaign_tracking_id, event.update_us
    first, latest = plan.campaign_times.get(campaign, (update_us, update_us))
    plan.campaign_times[campaign] = (min(first, update_us), max(latest, update_us))
    if event.is_current:
        status = event.message_status
        plan.messages[event.tracking_id] = Current(
            campaign, status, update_us, lifecycle_rank(status), event.sequence, event.channel
        )


def _count_messages(plan: StatusPlan, stored: Mapping[str, Current]) -> None:
    """How the messages per (campaign, current status) change: each message whose current status changes leaves
    its stored one and joins its new one."""
    for tracking_id, now in plan.messages.items():
        _count(plan.counts, (now.campaign_tracking_id, now.status), 1)
        if (before := stored.get(tracking_id)) is not None:
            _count(plan.counts, (before.campaign_tracking_id, before.status), -1)


def _count(counts: dict[tuple[str, int], int], key: tuple[str, int], delta: int) -> None:
    total = counts.get(key, 0) + delta
    if total:
        counts[key] = total
    else:
        counts.pop(key, None)


# -- inbound messages ---------------------------------------------------------------------------------------------


def appends(jobs: Sequence[Job]) -> tuple[list[AppendStatus], list[pb.InboundMessage]]:
    """The status callbacks and the inbound messages a batch appends (releases from quarantine included)."""
    callbacks: list[AppendStatus] = []
    messages: list[pb.InboundMessage] = []
    for job in jobs:
        append = job.append if isinstance(job, Release) else job
        if isinstance(append, AppendStatus):
            callbacks.append(append)
        elif isinstance(append, AppendInbound):
            messages.append(append.message)
    return callbacks, messages


class NewInbound(NamedTuple):
    """An inbound message to insert, with the key it is recognised by."""

    entry: StoredInbound
    key: str


@dataclass(slots=True)
class InboundPlan:
    """What to write for a batch of inbound messages."""

    #: Per message, in batch order: its new entry, or None for a duplicate.
    results: list[StoredInbound | None] = field(default_factory=list)
    #: New entries, in sequence order.
    entries: list[NewInbound] = field(default_factory=list)
    #: The greatest sequence after the batch.
    last_sequence: int = 0


def plan_inbound(
    messages: Sequence[pb.InboundMessage],
    keys: Sequence[str],
    *,
    existing: set[str],
    last_sequence: int,
    receive_us: int,
) -> InboundPlan:
    """Plan a batch of inbound messages, ``keys`` their inbound keys; sequences follow ``last_sequence``."""
    plan = InboundPlan(last_sequence=last_sequence)
    seen = set(existing)
    for message, key in zip(messages, keys, strict=True):
        if key in seen:
            plan.results.append(None)
            continue
        seen.add(key)
        plan.last_sequence += 1
        stored = pb.InboundMessage()
        stored.CopyFrom(message)
        stored.sequence = plan.last_sequence
        stored.receive_time.FromMicroseconds(receive_us)
        entry = StoredInbound(
            plan.last_sequence,
            message.campaign_tracking_id,
            message.reference_tracking_id,
            receive_us,
            stored.SerializeToString(),
            message.channel or VIBER,
        )
        plan.entries.append(NewInbound(entry, key))
        plan.results.append(entry)
    return plan
