"""The rules of Routee's message statuses, each in one place; pure, it imports only the protos.

- **Rank and precedence** decide which of a message's events is its current status. As the README states it
  (section "Pointing Routee at it"): the event with the latest ``updatedDate`` wins; on equal dates the higher
  lifecycle rank (UNKNOWN < QUEUED < SENT < DELIVERED < UNDELIVERED = FAILED = UNSENT = EXPIRED < SEEN); on equal
  rank too, the one stored later (the greater sequence). Engines order by ``ORDER_COLUMNS``, the planner compares
  ``precedence`` keys. Each part of an SMS has its current status by that rule.
- **A multipart SMS has one status** (``sms_message_status``): delivered when every part is; failed as its part
  that failed first; otherwise its least advanced part, a part not heard of counted as queued.
- **Final statuses** are those of the last ranks: Routee reports nothing after them in the normal course, so
  reconciliation stops there.
- **The duplicate rules**: a status event is one per ``event_key`` (an SMS part's per ``sms_event_key``), an
  inbound message one per ``inbound_key`` (an inbound SMS by its id).
- **Where an event came from** is the proto's ``EventSource``, **its channel** the proto's ``Channel``; **what a
  body is** is one of ``BODY_KINDS``;
  **what of its personal data is stored** is one of ``PERSONAL_DATA_MODES``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from routee.callbacks.v1 import callback_pb2 as pb
from routee.callbacks.v1 import message_status_service_pb2 as pb2

_RANK: dict[int, int] = {
    pb.MESSAGE_STATUS_UNKNOWN: 0,
    pb.MESSAGE_STATUS_QUEUED: 1,
    pb.MESSAGE_STATUS_SENT: 2,
    pb.MESSAGE_STATUS_DELIVERED: 3,
    pb.MESSAGE_STATUS_UNDELIVERED: 4,
    pb.MESSAGE_STATUS_FAILED: 4,
    pb.MESSAGE_STATUS_UNSENT: 4,
    pb.MESSAGE_STATUS_EXPIRED: 4,
    pb.MESSAGE_STATUS_SEEN: 5,
}
#: The rank of the statuses of a message that failed for good; from it on, a status is final.
_FAILED_RANK = 4

#: Statuses after which Routee reports nothing more in the normal course (reconciliation stops there).
FINAL_STATUSES = frozenset(status for status, rank in _RANK.items() if rank >= _FAILED_RANK)
#: Statuses of a message, or a part, that failed for good.
FAILED_STATUSES = frozenset(status for status, rank in _RANK.items() if rank == _FAILED_RANK)

#: The channels a message comes through (routee.callbacks.v1.Channel).
VIBER: int = pb.CHANNEL_VIBER
SMS: int = pb.CHANNEL_SMS
CHANNELS = frozenset({VIBER, SMS})

#: Columns of the ``events`` table in precedence order (``service.store.sql.order_by`` spells them for SQL).
ORDER_COLUMNS = ("update_us", "rank", "sequence")

#: Where a status event came from (routee.callbacks.v1.EventSource).
FROM_CALLBACK: int = pb2.EVENT_SOURCE_CALLBACK
FROM_TRACKING_API: int = pb2.EVENT_SOURCE_TRACKING_API

#: What a body posted to the service is: a status callback, or an inbound message (a reply), of Viber or SMS.
STATUS = "status"
INBOUND = "inbound"
SMS_STATUS = "sms"
SMS_INBOUND = "sms_inbound"
BODY_KINDS = (STATUS, INBOUND, SMS_STATUS, SMS_INBOUND)
INBOUND_KINDS = frozenset({INBOUND, SMS_INBOUND})

#: What of the personal data in bodies is stored (``--store-personal-data``): everything as Routee sent it,
#: numbers masked and no text, or neither (``service.routee.privacy`` applies it).
FULL, MASKED, NONE = "full", "masked", "none"
PERSONAL_DATA_MODES = (FULL, MASKED, NONE)

#: A distinct event: tracking id, case-folded status name, ``updatedDate`` in microseconds.
EventKey = tuple[str, str, int]


def lifecycle_rank(status: int) -> int:
    """Return the rank of a status in the message lifecycle."""
    return _RANK.get(status, 0)


def precedence(update_us: int, rank: int, sequence: int) -> tuple[int, int, int]:
    """The key that orders a message's events: the greatest is the current status."""
    return (update_us, rank, sequence)


def normalise_status_name(name: str) -> str:
    """Return the key under which a status name is compared (case-insensitive)."""
    return name.strip().casefold()


def event_key(callback: pb.ViberCallback) -> EventKey:
    """The key under which a callback is one distinct event: its tracking id, status name case-insensitively and
    ``updatedDate`` as an instant (the README's duplicate rule)."""
    status = callback.status
    update_time = status.update_time  # Its fields directly: Timestamp.ToMicroseconds is slow, and this is hot.
    return (
        callback.tracking_id,
        normalise_status_name(status.name),
        update_time.seconds * 1_000_000 + update_time.nanos // 1000,
    )


def sms_event_key(callback: pb.SmsCallback) -> EventKey:
    """The key under which an SMS delivery report is one distinct event: as ``event_key``, of its part (the part
    is in the key's second member, ``<status>/<part>``)."""
    status = callback.status
    update_time = status.update_time
    return (
        callback.message_id,
        f"{normalise_status_name(status.name)}/{callback.part or 1}",
        update_time.seconds * 1_000_000 + update_time.nanos // 1000,
    )


def sms_message_status(parts: Mapping[int, tuple[int, int]], count: int) -> int:
    """The status of a multipart SMS from its parts' current statuses (part number → (status, ``updatedDate`` in
    microseconds)) and its number of parts: delivered when every part 1..``count`` is; as soon as a part failed for
    good, the status of the part that failed first (earliest date, then lowest part); otherwise the status of the
    least advanced part, a part not yet reported counting as queued."""
    failed = [(update_us, part, status) for part, (status, update_us) in parts.items() if status in FAILED_STATUSES]
    if failed:
        return min(failed)[2]
    total = max(count, max(parts, default=1))
    statuses = [parts[part][0] if part in parts else pb.MESSAGE_STATUS_QUEUED for part in range(1, total + 1)]
    return min(statuses, key=lifecycle_rank)


def inbound_key(message: pb.InboundMessage) -> str:
    """What an inbound message is recognised by when Routee posts it again: an inbound SMS by its id; a Viber
    reply, which has none, by who sent what, when, in answer to which message."""
    if message.channel == SMS:
        return f"sms/{message.message_id}"
    sent = message.send_time
    parts = [
        message.sender,
        message.recipient,
        sent.seconds * 1_000_000 + sent.nanos // 1000,
        message.reference_tracking_id,
        message.text,
        message.media_url,
        message.file_name,
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def check_from(status: int, receive_us: int) -> int | None:
    """When reconciliation may look up a message whose current status became ``status`` at ``receive_us``: from
    then on (after its own delay), unless the status is final."""
    return None if status in FINAL_STATUSES else receive_us
