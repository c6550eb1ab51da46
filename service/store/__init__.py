"""The store is the log: the contract every engine (``sqlite``, ``postgres``) keeps.

Every distinct status event and every distinct inbound message (a reply)
gets a sequence, from one counter: together they are the log. **Sequences become visible in
commit order**: when a reader can see sequence ``n``, every sequence below
``n`` that will ever exist is already visible (or was pruned). Each engine
serialises the assignment of sequences inside its write transaction to keep
this, so a process that follows the log from its last seen sequence never
skips an event, and a stream resumed on any process or instance misses
nothing and repeats nothing.

A store has two faces:

- ``LogWriter`` — used by exactly one writer per process (the ``BatchWriter``),
  one call at a time: ``write`` runs a batch of jobs in one transaction and
  returns each job's result and the entries it committed, in sequence order.
  An engine that waits on a server (PostgreSQL) lets the event loop go on
  meanwhile; one whose transactions are short and local (SQLite) does not.
- ``LogReader`` — asynchronous reads for everyone else (the gRPC servicer,
  probes, the tailer filling a gap).

Nothing outside this package names an engine; ``open_store`` picks one from the ``--database`` value. The
algorithm is written once (``base``, ``writes``, ``maintenance``, ``plan``, ``sql``, ``schema``); each engine
(``sqlite``, ``postgres``) holds only what differs.

It may import ``service.domain`` and the protos.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.entries import (
    CampaignSummary,
    DueCheck,
    Entry,
    EventFilter,
    MessageState,
    StoredEvent,
    StoredInbound,
)
from service.domain.limits import MAX_QUARANTINE_ENTRIES
from service.domain.rules import FROM_CALLBACK, FULL, STATUS

if TYPE_CHECKING:
    from service.store.postgres import PostgresStore
    from service.store.sqlite import SqliteStore

_Row = TypeVar("_Row")


@dataclass(frozen=True, slots=True)
class AppendStatus:
    """Store one validated status callback; the result is its StoredEvent, or None for a duplicate.

    A message whose current status becomes one that is not final is due for reconciliation from the time it was
    stored (``check_from_us``); a final one never is.
    """

    callback: pb.ViberCallback | pb.SmsCallback
    source: int = FROM_CALLBACK


@dataclass(frozen=True, slots=True)
class AppendInbound:
    """Store one validated inbound message; the result is its StoredInbound, or None for a duplicate (the same
    content stored before: it has no id of its own)."""

    message: pb.InboundMessage


@dataclass(frozen=True, slots=True)
class Reschedule:
    """After a reconciliation lookup that changed nothing: look the message up again from ``check_from_us`` (None:
    never), unless its current status changed meanwhile (its current event is no longer ``current_sequence``).
    The result is whether it applied."""

    tracking_id: str
    current_sequence: int
    check_from_us: int | None


@dataclass(frozen=True, slots=True)
class Probe:
    """Write a heartbeat row; proves the store takes writes. The result is None."""


@dataclass(frozen=True, slots=True)
class PruneChunk:
    """Delete up to ``limit`` of the oldest status events received before ``cutoff_us`` (a message goes with its
    last event), up to ``limit`` of the oldest replies received before ``replies_cutoff_us`` (None: the same
    cutoff), and up to ``limit`` campaigns with no message left whose latest update is before
    ``campaigns_cutoff_us`` (None: none); the result is how many rows went (entries and campaigns)."""

    cutoff_us: int
    limit: int = 500
    replies_cutoff_us: int | None = None
    campaigns_cutoff_us: int | None = None


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Keep a body that was refused for its content, for an operator; the result is its quarantine id.

    The same body again (Routee retries a 4xx too) only counts another attempt. Past ``max_bytes`` in all (each
    entry counted for what it stores: ``quarantine_cost``) or past ``max_entries`` entries, the entries seen
    longest ago go first.
    """

    body: bytes
    peer: str
    status: int
    reason: str
    detail: str
    max_bytes: int
    kind: str = STATUS  #: What it was posted as: STATUS or INBOUND.
    max_entries: int = MAX_QUARANTINE_ENTRIES


@dataclass(frozen=True, slots=True)
class Release:
    """Store a quarantined body that now passes, and take it out of the quarantine, in one transaction; the result
    is that of ``append``."""

    quarantine_id: int
    append: AppendStatus | AppendInbound


@dataclass(frozen=True, slots=True)
class DropQuarantined:
    """Delete quarantined bodies: these ids, or all when None, or those last seen before ``seen_before_us``; the
    result is how many."""

    ids: tuple[int, ...] | None = None
    seen_before_us: int | None = None


@dataclass(frozen=True, slots=True)
class Erase:
    """Erase one phone number (E.164) from the entries with a sequence in (``after_sequence``, ``after_sequence``
    + ``limit``] and the quarantined bodies with an id in (``after_quarantine_id``, … + ``limit``]: its callbacks
    lose their recipient, its replies their sender and what they wrote, the bodies that hold it are dropped. The
    result is an ``Erased``; a window at a time keeps each transaction short while the service writes."""

    number: str
    after_sequence: int = 0
    after_quarantine_id: int = 0
    limit: int = 2000


@dataclass(frozen=True, slots=True)
class Erased:
    """What one ``Erase`` changed, in counts, and whether nothing is left after its windows."""

    callbacks: int = 0
    replies: int = 0
    quarantined: int = 0
    done: bool = True


Job = AppendStatus | AppendInbound | Reschedule | Probe | PruneChunk | Quarantine | Release | DropQuarantined | Erase
#: Jobs that run in a transaction of their own: their work would delay every callback batched with them.
SOLO_JOBS = (PruneChunk, Erase)


@dataclass(frozen=True, slots=True)
class Quarantined:
    """One body in quarantine."""

    id: int
    received_us: int
    last_us: int
    peer: str
    status: int
    reason: str
    detail: str
    attempts: int
    body: bytes
    kind: str  #: What it was posted as: STATUS or INBOUND.


@dataclass(slots=True)
class WriteResult:
    """What one committed transaction did: a result per job, in job order, and the new entries in sequence order."""

    results: list[Any] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)


class LogWriter(Protocol):
    """The writing face of a store; one caller at a time."""

    async def write(self, jobs: Sequence[Job], now_us: int) -> WriteResult:
        """Run the jobs in one transaction and commit it durably; raise on any failure (nothing is kept then).

        Raises StoreUnavailableError when the database cannot be reached or written now (any job would fail the
        same way); any other exception may be the fault of one job.
        """

    async def head(self) -> int:
        """Return the greatest sequence committed by anyone (0 when none)."""

    async def wait_for_commits(self, within: float) -> bool:
        """Return True when another process may have committed since the last call, or False after ``within``
        seconds. The first call only starts watching."""

    async def close_writer(self) -> None:
        """Close the writing connection; the next write opens a new one."""

    async def hold_lease(self) -> bool:
        """Take, or keep, the one lease of reconciliation among every instance on this database; say whether this
        process holds it. It lapses by itself when this process dies."""

    async def purge(self) -> None:
        """Make what this store overwrote or deleted unrecoverable from the database's own files (SQLite: the
        main file, its log and index, once checkpointed; PostgreSQL: the tables' files, rewritten). A store
        opened with ``secure_delete`` zeroes what it frees."""


class LogReader(Protocol):
    """The reading face of a store."""

    async def history(self, tracking_id: str) -> list[StoredEvent]:
        """Return every event of a message, in precedence order (its current status last)."""

    async def entries_after(self, after_sequence: int, limit: int) -> list[Entry]:
        """Return up to ``limit`` committed entries (of both kinds) with a greater sequence, in order."""

    async def replies(self, tracking_id: str) -> list[StoredInbound]:
        """Return the inbound messages that answer a message, oldest first."""

    async def message(self, tracking_id: str) -> MessageState | None:
        """Return a message's latest events (precedence order, its current status last) and the replies received
        last, at most MAX_EVENTS_PER_MESSAGE and MAX_REPLIES_PER_MESSAGE, with how many there are in all; read
        together (None when it has no event)."""

    async def events_after(self, after_sequence: int, event_filter: EventFilter, limit: int) -> Sequence[Entry]:
        """Return up to ``limit`` entries of the filter (status events, or inbound messages) with a greater
        sequence, in order."""

    async def snapshot_page(
        self, event_filter: EventFilter, as_of: int, after_tracking_id: str, limit: int
    ) -> list[StoredEvent]:
        """Return up to ``limit`` messages of the filter after ``after_tracking_id``, in tracking id order, each as
        its current event was at sequence ``as_of`` (those with no event by then left out): page by page, a
        snapshot consistent with ``as_of`` in bounded memory, however large the campaign."""

    async def statuses(self, tracking_ids: Sequence[str], *, history: bool = False) -> dict[str, MessageState]:
        """Return the messages found among ``tracking_ids`` (by tracking id), with their latest events and replies
        and their totals when asked (bounded as ``message``)."""

    async def list_messages(
        self,
        campaign_tracking_id: str,
        statuses: frozenset[int],
        after_tracking_id: str,
        limit: int,
        channels: frozenset[int] = frozenset(),
    ) -> list[StoredEvent]:
        """Return the current-status events of up to ``limit`` messages of a campaign whose current status is one
        of ``statuses`` and channel one of ``channels`` (all when empty), with a tracking id after
        ``after_tracking_id``, in tracking id order."""

    async def campaign_summary(self, campaign_tracking_id: str) -> CampaignSummary | None:
        """Return the campaign's counts by current status and the sequence they are consistent with (None when the
        campaign is unknown). It reads a few rows, whatever the campaign's size: the counts are kept as events are
        stored."""

    async def due_checks(self, changed_before_us: int, limit: int) -> list[DueCheck]:
        """Return up to ``limit`` messages due for reconciliation (``check_from_us`` before ``changed_before_us``),
        those due longest first."""

    async def last_sequence(self) -> int:
        """Return the greatest sequence committed (0 when none)."""

    async def pruned_through(self) -> int:
        """Return the greatest sequence ever pruned (0 when none): resuming after less would miss events."""

    async def quarantined(self, ids: Sequence[int] | None = None) -> list[Quarantined]:
        """Return the bodies in quarantine (these ids, or all), the longest-held first."""

    async def quarantine_size(self) -> tuple[int, int]:
        """Return how many bodies the quarantine holds, and their bytes."""


class Store(LogWriter, LogReader, Protocol):
    """Both faces, with a life cycle."""

    def open(self) -> None:
        """Create or upgrade the schema (idempotent, safe when several processes start at once)."""

    async def close(self) -> None:
        """Close every connection."""


def bounded(rows: list[_Row], most: int) -> tuple[list[_Row], bool]:
    """Rows read newest first with one more than ``most``: the newest ``most`` in their own order, and whether
    there were more (then the total must be counted)."""
    return rows[most - 1 :: -1] if len(rows) > most else rows[::-1], len(rows) > most


def with_latest(
    found: dict[str, MessageState],
    events: Sequence[tuple[StoredEvent, int]],
    replies: Sequence[tuple[StoredInbound, int]],
) -> None:
    """Put the rows of ``latest_events_sql`` and ``latest_replies_sql`` (each with its total) into the states."""
    for event, total in events:
        if (state := found.get(event.tracking_id)) is not None:
            state.history.append(event)
            state.events_total = total
    for reply, total in replies:
        if (state := found.get(reply.reference_tracking_id)) is not None:
            state.replies.append(reply)
            state.replies_total = total


def merge_entries(events: Sequence[StoredEvent], inbound: Sequence[StoredInbound], limit: int) -> list[Entry]:
    """The first ``limit`` entries of two pages read after the same sequence, each in order, in sequence order."""
    merged: list[Entry] = [*events, *inbound]
    merged.sort(key=lambda entry: entry.sequence)
    return merged[:limit]


def body_digest(body: bytes) -> str:
    """How the quarantine recognises a body it holds already."""
    return hashlib.sha256(body).hexdigest()


#: What a quarantined entry costs besides its body and texts: its other columns, its digest again in the unique
#: index, the pages' own overhead (measured on SQLite: 3 000 entries of 3-byte bodies took 938 KB on disk).
QUARANTINE_ENTRY_BYTES = 256


def quarantine_cost(job: Quarantine) -> int:
    """The bytes a quarantined entry counts for against --quarantine-max-mb: what it stores, not only its body."""
    texts = len(job.peer.encode()) + len(job.reason.encode()) + len(job.detail.encode())
    return len(job.body) + texts + QUARANTINE_ENTRY_BYTES


def oldest_beyond(oldest: Sequence[tuple[int, int]], excess: int, excess_entries: int = 0) -> list[int]:
    """Of quarantine entries (id, size), oldest first, the ids to delete to free at least ``excess`` bytes and
    ``excess_entries`` entries."""
    doomed: list[int] = []
    freed = 0
    for quarantine_id, size in oldest:
        if freed >= excess and len(doomed) >= excess_entries:
            break
        doomed.append(quarantine_id)
        freed += size
    return doomed


def is_postgres(database: str) -> bool:
    """Tell whether a ``--database`` value names a PostgreSQL server rather than a SQLite file."""
    return database.startswith(("postgresql://", "postgres://"))


def open_store(
    database: str, *, synchronous: str = "FULL", secure_delete: bool = False, personal_data: str = FULL
) -> Store:
    """The engine a ``--database`` value names (it is not opened yet): a PostgreSQL URI or a SQLite file path.
    ``secure_delete``: what the store frees is zeroed (SQLite; PostgreSQL's ``purge`` rewrites instead).
    ``personal_data``: what of it the store writes (``--store-personal-data``)."""
    engine: PostgresStore | SqliteStore
    if is_postgres(database):
        from service.store.postgres import PostgresStore

        engine = PostgresStore(database)
    else:
        from service.store.sqlite import SqliteStore

        engine = SqliteStore(Path(database), synchronous=synchronous, secure_delete=secure_delete)
    engine.personal_data = personal_data
    return engine
