"""The entries of the log as stored — status events and inbound messages — and the filter that selects them,
shared by store, broker and servicer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One distinct status event as stored."""

    sequence: int
    tracking_id: str
    campaign_tracking_id: str
    status: int
    status_name: str
    update_us: int
    receive_us: int
    is_current: bool  # whether it became the message's current status as it was stored
    callback: bytes  # ViberCallback, serialized


@dataclass(frozen=True, slots=True)
class StoredInbound:
    """One distinct inbound message (a reply) as stored; it takes its sequence from the same log."""

    sequence: int
    campaign_tracking_id: str
    reference_tracking_id: str
    receive_us: int
    message: bytes  # InboundMessage, serialized, with its sequence and receive time


#: An entry of the log.
Entry = StoredEvent | StoredInbound


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which entries a reader wants: status events or inbound messages, of one campaign or all (``None``), of
    some statuses or all (empty; status events only)."""

    campaign_tracking_id: str | None = None
    statuses: frozenset[int] = frozenset()
    inbound: bool = False
