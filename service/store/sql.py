"""What the engines' SQL has in common, and the one place where it differs: the ``Dialect``.

Every statement of the store is written once, with ``%s`` placeholders, against a ``Session``: an open
transaction of either engine. A session runs a statement and answers a cursor (``fetchone``, ``fetchall``,
``rowcount``), or its rows (``rows``); PostgreSQL's session sends statements without waiting for their
answers (pipeline mode), so a caller that executes several before it fetches pays one round trip.

What differs between the engines, and nothing else, is the ``Dialect`` (as SQLAlchemy's ``default_paramstyle``
and Django's ``db/backends/base/operations.py``): how a list becomes a condition, how literal rows become a
relation, whether the log's head is locked by a read, who may prune, and the column types of the schema; and
the session's ``insert`` of rows in bulk.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from service.domain.entries import EventFilter, StoredEvent, StoredInbound
from service.domain.limits import MAX_EVENTS_PER_MESSAGE, MAX_REPLIES_PER_MESSAGE
from service.domain.rules import ORDER_COLUMNS

#: A column as the schema declares it: its name and its type's token in ``Dialect.types``.
Column = tuple[str, str]


@dataclass(frozen=True, slots=True, eq=False)
class Insert:
    """A bulk insert: rows of ``columns`` into ``table``, then ``tail`` (an ON CONFLICT or RETURNING clause). Each
    is a constant, known by its identity (engines cache their statement for it)."""

    table: str
    columns: tuple[Column, ...]
    tail: str = ""

    @property
    def names(self) -> str:
        return ", ".join(name for name, _ in self.columns)


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one engine spells what the others spell differently."""

    #: What makes the read of the log's head take the log's lock until commit ("" where the transaction holds it).
    lock_head: str
    #: The schema's column types and clauses, by token (see ``service.store.schema``).
    types: Mapping[str, str]
    #: Whether a list parameter is one array (``= ANY(%s)``) rather than a placeholder per item (``IN (...)``).
    arrays: bool
    #: A statement answering whether this transaction may prune now (None: the write lock is enough).
    prune_lock: str | None = None

    def any_of(self, column: str, values: Sequence[object]) -> tuple[str, tuple[object, ...]]:
        """A condition that ``column`` is one of ``values``, and its parameters."""
        if self.arrays:
            return f"{column} = ANY(%s)", (list(values),)
        return f"{column} IN ({', '.join(['%s'] * len(values))})", tuple(values)

    def literal_rows(self, columns: Sequence[Column], rows: Sequence[Sequence[object]]) -> tuple[str, list[object]]:
        """A query whose result is ``rows`` (of ``columns``), for a ``WITH name (columns) AS (...)``."""
        if self.arrays:
            arrays = ", ".join(f"%b::{self.types[kind]}[]" for _, kind in columns)
            return f"SELECT * FROM unnest({arrays})", [list(column) for column in zip(*rows, strict=True)]
        row = f"({', '.join(['%s'] * len(columns))})"
        return f"VALUES {', '.join([row] * len(rows))}", [value for values in rows for value in values]


class Cursor(Protocol):
    """What a statement answers."""

    @property
    def rowcount(self) -> int: ...

    async def fetchone(self) -> Any: ...

    async def fetchall(self) -> list[Any]: ...


class Session(Protocol):
    """An open transaction of an engine."""

    dialect: Dialect

    async def execute(self, sql: str, params: Sequence[object] = ()) -> Cursor:
        """Run one statement (PostgreSQL: send it; its answer is awaited when fetched)."""

    async def rows(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        """Run one query and return its rows."""

    async def insert(self, insert: Insert, rows: Sequence[Sequence[object]]) -> None:
        """Insert rows in bulk, the engine's fastest way."""


#: The columns of a stored event and of a stored inbound message, in the order of StoredEvent and StoredInbound.
EVENT_COLUMNS = (
    "sequence, tracking_id, campaign_tracking_id, status, status_name, update_us, receive_us, was_current, callback,"
    " previous_status, source, channel, part, message_status"
)
INBOUND_COLUMNS = "sequence, campaign_tracking_id, reference_tracking_id, receive_us, message, channel"
QUARANTINE_COLUMNS = "id, received_us, last_us, peer, status, reason, detail, attempts, body, kind"


def event_columns(prefix: str) -> str:
    """EVENT_COLUMNS of a table alias ``prefix`` (for example ``"e."``)."""
    return ", ".join(f"{prefix}{column.strip()}" for column in EVENT_COLUMNS.split(","))


def order_by(prefix: str = "", *, descending: bool = False) -> str:
    """The ``ORDER BY`` list of the current-status rule (``service.domain.rules.precedence``), for a table alias
    ``prefix``: ascending for history (current last), descending to find the current event."""
    direction = " DESC" if descending else ""
    return ", ".join(f"{prefix}{column}{direction}" for column in ORDER_COLUMNS)


def event(row: Sequence[Any]) -> StoredEvent:
    """A StoredEvent from a row of EVENT_COLUMNS (more columns after them are ignored)."""
    return StoredEvent(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        bool(row[7]),
        bytes(row[8]),
        row[9],
        row[10],
        row[11],
        row[12],
        row[13],
    )


def inbound(row: Sequence[Any]) -> StoredInbound:
    """A StoredInbound from a row of INBOUND_COLUMNS (more columns after them are ignored)."""
    return StoredInbound(row[0], row[1], row[2], row[3], bytes(row[4]), row[5])


def each_one_of(dialect: Dialect, *filters: tuple[str, Collection[int]]) -> tuple[str, tuple[object, ...]]:
    """For each (column, values) with values, the condition that the column is one of them after an ``AND``; and
    their parameters."""
    clauses = ""
    params: tuple[object, ...] = ()
    for column, values in filters:
        if values:
            condition, more = dialect.any_of(column, sorted(values))
            clauses += f" AND {condition}"
            params += more
    return clauses, params


def where(event_filter: EventFilter, dialect: Dialect) -> tuple[str, tuple[object, ...]]:
    """The conditions of a filter, each after an ``AND``, and their parameters."""
    clauses = ""
    params: tuple[object, ...] = ()
    if event_filter.campaign_tracking_id is not None:
        clauses += " AND campaign_tracking_id = %s"
        params += (event_filter.campaign_tracking_id,)
    more, values = each_one_of(dialect, ("status", event_filter.statuses), ("channel", event_filter.channels))
    return clauses + more, params + values


def snapshot_page(
    dialect: Dialect, event_filter: EventFilter, as_of: int, after: str, limit: int
) -> tuple[str, tuple[object, ...]]:
    """One page of a snapshot, and its parameters: the messages of the filter after a tracking id, in tracking id
    order, each with its current event as of a sequence (the last event up to it that became current; a message whose
    first event came later is not in it).

    A message read as it is now but changed after that sequence would reach the stream twice, or leave a gap: its
    state as of the sequence makes the snapshot and the live updates after it meet exactly. Driven from the
    messages' (campaign, tracking id) index, each event found by primary key (a ``CROSS JOIN`` keeps SQLite to
    that order): linear in the campaign, and a page costs the same at its end as at its start."""
    as_of_sequence = (
        "CASE WHEN m.current_sequence <= %s THEN m.current_sequence ELSE (SELECT h.sequence FROM events h"
        " WHERE h.tracking_id = m.tracking_id AND h.sequence <= %s AND h.was_current ORDER BY h.sequence DESC"
        " LIMIT 1) END"
    )
    conditions = f"e.sequence = {as_of_sequence}"
    params: tuple[object, ...] = (as_of, as_of)
    if event_filter.campaign_tracking_id is not None:
        conditions += " AND m.campaign_tracking_id = %s"
        params += (event_filter.campaign_tracking_id,)
    conditions += " AND m.tracking_id > %s"
    params += (after,)
    more, values = each_one_of(
        dialect, ("e.message_status", event_filter.statuses), ("m.channel", event_filter.channels)
    )
    conditions += more
    params += values
    return (
        f"SELECT {event_columns('e.')} FROM messages m CROSS JOIN events e WHERE {conditions}"
        " ORDER BY m.tracking_id LIMIT %s",
        (*params, limit),
    )


def latest_events(condition: str) -> str:
    """The latest MAX_EVENTS_PER_MESSAGE events of each message that ``condition`` (on ``tracking_id``) selects,
    in precedence order; each row ends with the count of all the message's events."""
    return (
        f"SELECT {EVENT_COLUMNS}, total FROM (SELECT *,"
        f" ROW_NUMBER() OVER (PARTITION BY tracking_id ORDER BY {order_by(descending=True)}) AS latest,"
        f" COUNT(*) OVER (PARTITION BY tracking_id) AS total FROM events WHERE {condition}) AS bounded"
        f" WHERE latest <= {MAX_EVENTS_PER_MESSAGE} ORDER BY tracking_id, {order_by()}"
    )


def latest_replies(condition: str) -> str:
    """The latest MAX_REPLIES_PER_MESSAGE replies received to each message that ``condition`` (on
    ``reference_tracking_id``) selects, in sequence order; each row ends with the count of all its replies."""
    return (
        f"SELECT {INBOUND_COLUMNS}, total FROM (SELECT {INBOUND_COLUMNS},"
        " ROW_NUMBER() OVER (PARTITION BY reference_tracking_id ORDER BY sequence DESC) AS latest,"
        " COUNT(*) OVER (PARTITION BY reference_tracking_id) AS total FROM inbound"
        f" WHERE {condition}) AS bounded WHERE latest <= {MAX_REPLIES_PER_MESSAGE}"
        " ORDER BY reference_tracking_id, sequence"
    )


#: One message's latest events and replies, newest first and one more row than the bound (a full page shows
#: there are more), and, only then needed, their counts. Cheaper than the windows of ``latest_events`` for a
#: single message (measured on SQLite, a message of two events: 18 us of CPU per read against 34).
ONE_MESSAGE_EVENTS = (
    f"SELECT {EVENT_COLUMNS} FROM events WHERE tracking_id = %s"
    f" ORDER BY {order_by(descending=True)} LIMIT {MAX_EVENTS_PER_MESSAGE + 1}"
)
ONE_MESSAGE_REPLIES = (
    f"SELECT {INBOUND_COLUMNS} FROM inbound WHERE reference_tracking_id = %s"
    f" ORDER BY sequence DESC LIMIT {MAX_REPLIES_PER_MESSAGE + 1}"
)
#: A message's current-status event, as its row names it (an SMS's is not the best of its events by precedence).
CURRENT_EVENT = (
    f"SELECT {event_columns('e.')} FROM messages m JOIN events e ON e.sequence = m.current_sequence"
    " WHERE m.tracking_id = %s"
)
COUNT_EVENTS = "SELECT COUNT(*) FROM events WHERE tracking_id = %s"
COUNT_REPLIES = "SELECT COUNT(*) FROM inbound WHERE reference_tracking_id = %s"
HISTORY = f"SELECT {EVENT_COLUMNS} FROM events WHERE tracking_id = %s ORDER BY {order_by()}"
REPLIES = f"SELECT {INBOUND_COLUMNS} FROM inbound WHERE reference_tracking_id = %s ORDER BY sequence"


# -- counters kept in the write transaction ------------------------------------------------------------------


async def scalar(session: Session, sql: str, params: Sequence[object] = ()) -> int:
    """The one integer a query answers (0 when it answers no row)."""
    rows = await session.rows(sql, params)
    return int(rows[0][0]) if rows else 0


async def meta(session: Session, key: str) -> int:
    """A counter of the ``meta`` table (0 when it has none)."""
    return await scalar(session, "SELECT value FROM meta WHERE key = %s", (key,))


async def set_meta(session: Session, key: str, value: int) -> None:
    """Set a counter of the ``meta`` table."""
    await session.execute(
        "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


_COUNTS = Insert(
    "campaign_counts",
    (("campaign_tracking_id", "text"), ("status", "int2"), ("messages", "int8")),
    " ON CONFLICT (campaign_tracking_id, status) DO UPDATE SET messages = campaign_counts.messages + excluded.messages",
)


async def add_counts(session: Session, counts: Mapping[tuple[str, int], int]) -> None:
    keys = sorted(counts)  # One order for every writer: two instances' upserts cannot deadlock.
    if keys:
        await session.insert(_COUNTS, [(campaign, status, counts[(campaign, status)]) for campaign, status in keys])
