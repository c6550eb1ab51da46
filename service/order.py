"""The current-status rule, in one place: which of a message's events is its current status.

As the README states it (section "Pointing Routee at it"): the event with the latest ``updatedDate`` wins; on
equal dates the higher lifecycle rank (UNKNOWN < QUEUED < DELIVERED <
UNDELIVERED = FAILED = UNSENT = EXPIRED < SEEN); on equal rank too, the one
stored later (the greater sequence). Engines order by ``ORDER_COLUMNS`` and
the planner compares ``precedence`` keys; nothing else decides it.
"""

from __future__ import annotations

from routee.callbacks.v1 import callback_pb2 as pb

_RANK: dict[int, int] = {
    pb.MESSAGE_STATUS_UNKNOWN: 0,
    pb.MESSAGE_STATUS_QUEUED: 1,
    pb.MESSAGE_STATUS_DELIVERED: 2,
    pb.MESSAGE_STATUS_UNDELIVERED: 3,
    pb.MESSAGE_STATUS_FAILED: 3,
    pb.MESSAGE_STATUS_UNSENT: 3,
    pb.MESSAGE_STATUS_EXPIRED: 3,
    pb.MESSAGE_STATUS_SEEN: 4,
}

#: Statuses after which Routee reports nothing more in the normal course (reconciliation stops there).
FINAL_STATUSES = frozenset(
    {
        pb.MESSAGE_STATUS_SEEN,
        pb.MESSAGE_STATUS_FAILED,
        pb.MESSAGE_STATUS_UNDELIVERED,
        pb.MESSAGE_STATUS_UNSENT,
        pb.MESSAGE_STATUS_EXPIRED,
    }
)

#: Columns of the ``events`` table in precedence order: ``ORDER BY`` them ascending for history (current last),
#: descending to find the current event.
ORDER_COLUMNS = ("update_us", "rank", "sequence")


def lifecycle_rank(status: int) -> int:
    """Return the rank of a status in the message lifecycle."""
    return _RANK.get(status, 0)


def precedence(update_us: int, rank: int, sequence: int) -> tuple[int, int, int]:
    """The key that orders a message's events: the greatest is the current status."""
    return (update_us, rank, sequence)


def order_by(prefix: str = "", *, descending: bool = False) -> str:
    """The SQL ``ORDER BY`` list of the rule, for a table alias ``prefix`` (for example ``"e."``)."""
    direction = " DESC" if descending else ""
    return ", ".join(f"{prefix}{column}{direction}" for column in ORDER_COLUMNS)
