"""The stored status event and the filter that selects events, shared by store, broker and servicer."""

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
class EventFilter:
    """Which events a reader wants: one campaign or all (``None``), some statuses or all (empty)."""

    campaign_tracking_id: str | None = None
    statuses: frozenset[int] = frozenset()
