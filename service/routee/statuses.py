"""Routee's status names and what they mean here."""

from __future__ import annotations

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.rules import normalise_status_name

_STATUS_BY_NAME: dict[str, int] = {
    "queued": pb.MESSAGE_STATUS_QUEUED,
    "sent": pb.MESSAGE_STATUS_SENT,
    "delivered": pb.MESSAGE_STATUS_DELIVERED,
    "seen": pb.MESSAGE_STATUS_SEEN,
    "undelivered": pb.MESSAGE_STATUS_UNDELIVERED,
    "expired": pb.MESSAGE_STATUS_EXPIRED,
    "failed": pb.MESSAGE_STATUS_FAILED,
    "unsent": pb.MESSAGE_STATUS_UNSENT,
}


def status_from_name(name: str) -> int:
    """Map a Routee status name, in any case, to MessageStatus; unknown names to UNKNOWN."""
    return _STATUS_BY_NAME.get(normalise_status_name(name), pb.MESSAGE_STATUS_UNKNOWN)
