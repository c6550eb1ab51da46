"""The embedded engine: one SQLite file in WAL mode.

Writes run in ``BEGIN IMMEDIATE`` transactions, so one writer at a time holds
the database; sequences are taken from the ``last_sequence`` row inside that
transaction, which keeps them in commit order across processes. Reads run on
their own connections (WAL lets them proceed while a write is under way).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from service.errors import StartupError, StoreUnavailableError
from service.events import (
    CampaignSummary,
    DueCheck,
    Entry,
    EventFilter,
    MessageState,
    StoredEvent,
    StoredInbound,
)
from service.limits import MAX_EVENTS_PER_MESSAGE, MAX_REPLIES_PER_MESSAGE
from service.order import order_by
from service.store import (
    EVENT_COLUMNS,
    INBOUND_COLUMNS,
    AppendInbound,
    AppendStatus,
    DropQuarantined,
    Job,
    Probe,
    PruneChunk,
    Quarantine,
    Quarantined,
    Release,
    Reschedule,
    WriteResult,
    body_digest,
    bounded,
    event_columns,
    latest_events_sql,
    latest_replies_sql,
    merge_entries,
    oldest_beyond,
    one_message_sql,
    quarantine_cost,
    snapshot_page_parameters,
    snapshot_page_sql,
    with_latest,
)
from service.store.plan import (
    Current,
    EventKey,
    InboundPlan,
    StatusPlan,
    appends,
    check_from,
    event_key,
    inbound_key,
    plan_inbound,
    plan_status,
    tracking_ids,
)

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

# Each entry upgrades the schema by one version (PRAGMA user_version); never edit one that has shipped. Scripts
# are split into statements at semicolons: none in comments.
_MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS events (
        sequence INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after pruning
        tracking_id TEXT NOT NULL,
        campaign_tracking_id TEXT NOT NULL,          -- '' when the callback has none
        status_key TEXT NOT NULL,                    -- the status name, case-folded
        status INTEGER NOT NULL,                     -- MessageStatus
        status_name TEXT NOT NULL,                   -- as Routee sent it
        rank INTEGER NOT NULL,                       -- lifecycle rank, breaks ties of update_us
        update_us INTEGER NOT NULL,                  -- status.updatedDate, microseconds since the epoch
        receive_us INTEGER NOT NULL,
        was_current INTEGER NOT NULL,                -- 1 when it became the current status as stored
        callback BLOB NOT NULL,                      -- ViberCallback, serialized protobuf
        UNIQUE (tracking_id, status_key, update_us)
    );
    CREATE INDEX IF NOT EXISTS events_by_campaign ON events (campaign_tracking_id, sequence);
    CREATE TABLE IF NOT EXISTS messages (
        tracking_id TEXT PRIMARY KEY,
        campaign_tracking_id TEXT NOT NULL,
        current_sequence INTEGER NOT NULL,
        update_us INTEGER NOT NULL,
        rank INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS messages_by_campaign ON messages (campaign_tracking_id);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    """,
    # The log's head is a row of its own, the one counter every writer takes its sequences from.
    """
    INSERT OR IGNORE INTO meta (key, value)
    SELECT 'last_sequence', coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0);
    """,
    # Bodies refused for their content, kept for an operator (quarantine list | replay | drop).
    """
    CREATE TABLE IF NOT EXISTS quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        body_hash TEXT NOT NULL UNIQUE,              -- sha256 of the body: a retry counts, it is not kept again
        received_us INTEGER NOT NULL,
        last_us INTEGER NOT NULL,
        peer TEXT NOT NULL,
        status INTEGER NOT NULL,                     -- the HTTP status answered
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        size INTEGER NOT NULL,
        body BLOB NOT NULL
    );
    CREATE INDEX IF NOT EXISTS quarantine_by_last ON quarantine (last_us, id);
    INSERT OR IGNORE INTO meta (key, value) VALUES ('quarantine_bytes', 0);
    """,
    # Inbound messages (replies): entries of the same log, their sequences from the same counter.
    """
    CREATE TABLE IF NOT EXISTS inbound (
        sequence INTEGER PRIMARY KEY,
        content_key TEXT NOT NULL UNIQUE,            -- plan.inbound_key: a retry is recognised by its content
        campaign_tracking_id TEXT NOT NULL,          -- '' when it has none
        reference_tracking_id TEXT NOT NULL,         -- the message it answers, '' when unknown
        receive_us INTEGER NOT NULL,
        message BLOB NOT NULL                        -- InboundMessage, serialized protobuf
    );
    CREATE INDEX IF NOT EXISTS inbound_by_campaign ON inbound (campaign_tracking_id, sequence);
    CREATE INDEX IF NOT EXISTS inbound_by_reference ON inbound (reference_tracking_id, sequence);
    ALTER TABLE quarantine ADD COLUMN kind TEXT NOT NULL DEFAULT 'status';
    """,
    # Campaign questions: each message's current status in its row, counts per campaign and status kept as
    # events are stored, and each update's previous current status (to keep counts live from a stream).
    """
    ALTER TABLE events ADD COLUMN previous_status INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN status INTEGER NOT NULL DEFAULT 0;
    UPDATE messages SET status = (SELECT e.status FROM events e WHERE e.sequence = messages.current_sequence);
    CREATE INDEX IF NOT EXISTS messages_by_campaign_status ON messages (campaign_tracking_id, status);
    CREATE TABLE IF NOT EXISTS campaign_counts (
        campaign_tracking_id TEXT NOT NULL,
        status INTEGER NOT NULL,
        messages INTEGER NOT NULL,
        PRIMARY KEY (campaign_tracking_id, status)
    ) WITHOUT ROWID;
    INSERT INTO campaign_counts SELECT campaign_tracking_id, status, count(*) FROM messages GROUP BY 1, 2;
    CREATE TABLE IF NOT EXISTS campaigns (
        campaign_tracking_id TEXT PRIMARY KEY,
        first_update_us INTEGER NOT NULL,
        latest_update_us INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO campaigns SELECT campaign_tracking_id, min(update_us), max(update_us) FROM events GROUP BY 1;
    """,
    # Reconciliation with Routee's tracking API: where each event came from, and when each message whose status
    # is not final may be looked up (NULL: never; a final status 3-7, or given up).
    """
    ALTER TABLE events ADD COLUMN source INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE messages ADD COLUMN check_from_us INTEGER;
    ALTER TABLE messages ADD COLUMN checks INTEGER NOT NULL DEFAULT 0;
    UPDATE messages SET check_from_us = (SELECT e.receive_us FROM events e WHERE e.sequence = messages.current_sequence)
        WHERE status NOT IN (3, 4, 5, 6, 7);
    CREATE INDEX IF NOT EXISTS messages_to_check ON messages (check_from_us) WHERE check_from_us IS NOT NULL;
    """,
    # Snapshots and lists walk a campaign's messages in tracking id order: one index serves both (it replaces the
    # campaign's index, a prefix of it, so a callback costs no more index writes).
    """
    CREATE INDEX IF NOT EXISTS messages_by_campaign_and_id ON messages (campaign_tracking_id, tracking_id);
    DROP INDEX IF EXISTS messages_by_campaign;
    """,
)

#: Reader threads, each with its connection: a long read (a campaign's snapshot) leaves others to the rest.
READER_THREADS = 4
_QUARANTINE_COLUMNS = "id, received_us, last_us, peer, status, reason, detail, attempts, body, kind"
_HISTORY = f"SELECT {EVENT_COLUMNS} FROM events WHERE tracking_id = ? ORDER BY {order_by()}"
_REPLIES = f"SELECT {INBOUND_COLUMNS} FROM inbound WHERE reference_tracking_id = ? ORDER BY sequence"
_ONE_MESSAGE = one_message_sql("?")


class SqliteStore:
    """A SQLite database file as the log; see ``service.store`` for the contract."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 1000,
        poll_interval: float = 0.05,
    ) -> None:
        self._path = path
        #: What a write needs to be allowed to change (checked before each transaction).
        self._must_be_writable = tuple(
            (what, str(name))
            for what, name in (
                ("file", path),
                ("directory", path.parent),
                ("log file", path.with_name(path.name + "-wal")),
                ("index file", path.with_name(path.name + "-shm")),
            )
        )
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._poll_interval = poll_interval
        self._writer: sqlite3.Connection | None = None
        self._generation = 0
        self._data_version: int | None = None
        #: The log's head after this store's own last commit of entries: commits that leave the head there (or
        #: before it, as a reader saw it) added nothing to follow (as PostgreSQL's watcher ignores its own NOTIFYs).
        self._own_head: int | None = None
        # One thread: data_version is compared across polls, so they must all run on the same connection.
        self._readers = ThreadPoolExecutor(max_workers=READER_THREADS, thread_name_prefix="store-reader")
        self._local = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def __str__(self) -> str:
        return str(self._path)

    # -- life cycle -------------------------------------------------------------------

    def open(self) -> None:
        """Create or upgrade the schema; raise StartupError when the file cannot be used."""
        try:
            connection = self._connect()
            try:
                _migrate(connection)
            finally:
                connection.close()
        except sqlite3.Error as ex:
            raise StartupError(f"cannot open database {self._path}: {ex}") from None

    async def close(self) -> None:
        """Close every connection."""
        self._drop_writer()
        await asyncio.get_running_loop().run_in_executor(None, self._readers.shutdown)
        with self._lock:
            for connection in self._reader_connections:
                connection.close()
            self._reader_connections.clear()

    async def close_writer(self) -> None:
        """Close the writing connection; the next write opens a new one."""
        self._drop_writer()

    async def hold_lease(self) -> bool:
        """One instance per file: its writer process always holds the lease."""
        return True

    def _drop_writer(self) -> None:
        # SQLite shares a file's WAL index among all connections of a process: one opened while the file was
        # read-only keeps every new one read-only. After a failed write, every connection starts over.
        self._generation += 1
        own: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if own is not None:  # This thread's reader (inline reads): close it now; other threads' at their next read.
            with self._lock:
                self._reader_connections.remove(own)
            own.close()
            self._local.connection = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        connection.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(f"PRAGMA synchronous = {self._synchronous}")
        return connection

    def _writer_connection(self) -> sqlite3.Connection:
        if self._writer is None:
            self._writer = self._connect()
        return self._writer

    # -- the writing face ---------------------------------------------------------------

    async def write(self, jobs: Sequence[Job], now_us: int) -> WriteResult:
        """Run the jobs in one ``BEGIN IMMEDIATE`` transaction and commit; roll back and re-raise on any failure.

        It runs on the caller's thread and does not yield: a local transaction takes less than a millisecond, and
        a hand-off to a thread and back costs more than it would save (measured).
        """
        try:
            self._check_writable()
            connection = self._writer_connection()
            connection.execute("BEGIN IMMEDIATE")
            result = self._run(connection, jobs, now_us)
            connection.execute("COMMIT")
            if result.entries:  # In sequence order: the last is the head now.
                self._own_head = result.entries[-1].sequence
        except sqlite3.OperationalError as ex:  # Locked, read-only, disk full, I/O error: nothing can be written now.
            self._drop_writer()
            raise StoreUnavailableError(f"SQLite database {self._path} cannot be written: {ex}") from None
        except BaseException:
            # Whatever else failed, start over on a fresh connection next time.
            self._drop_writer()
            raise
        return result

    def _run(self, connection: sqlite3.Connection, jobs: Sequence[Job], now_us: int) -> WriteResult:
        last = _meta(connection, "last_sequence")
        callbacks, messages = appends(jobs)
        plan = _plan(connection, callbacks, last, now_us) if callbacks else StatusPlan(last_sequence=last)
        inbound = (
            _plan_inbound(connection, messages, plan.last_sequence, now_us)
            if messages
            else InboundPlan(last_sequence=plan.last_sequence)
        )
        _apply(connection, plan, inbound, now_us)
        statuses, replies = iter(plan.results), iter(inbound.results)
        result = WriteResult(entries=[new.event for new in plan.events] + [new.entry for new in inbound.entries])
        for job in jobs:
            if isinstance(job, AppendStatus):
                result.results.append(next(statuses))
            elif isinstance(job, AppendInbound):
                result.results.append(next(replies))
            elif isinstance(job, Release):
                result.results.append(next(statuses if isinstance(job.append, AppendStatus) else replies))
                _drop_quarantined(connection, DropQuarantined(ids=(job.quarantine_id,)))
            elif isinstance(job, Quarantine):
                result.results.append(_quarantine(connection, job, now_us))
            elif isinstance(job, DropQuarantined):
                result.results.append(_drop_quarantined(connection, job))
            elif isinstance(job, Reschedule):
                result.results.append(
                    connection.execute(
                        "UPDATE messages SET check_from_us = ?, checks = checks + 1"
                        " WHERE tracking_id = ? AND current_sequence = ?",
                        (job.check_from_us, job.tracking_id, job.current_sequence),
                    ).rowcount
                    == 1
                )
            elif isinstance(job, Probe):
                _set_meta(connection, "probed_at_us", now_us)
                result.results.append(None)
            elif isinstance(job, PruneChunk):
                result.results.append(_prune_chunk(connection, job.cutoff_us, job.limit))
            else:
                raise TypeError(f"no such job: {job!r}")
        return result

    def _check_writable(self) -> None:
        """Refuse to write when the file or its directory was made read-only.

        The open connection's descriptor would still write (permissions are checked at open only), but whoever
        made the database read-only meant it; the next write after they undo it opens a new connection.
        """
        for what, path in self._must_be_writable:  # One access() each while all is well (this runs per batch).
            if not os.access(path, os.W_OK) and os.path.exists(path):
                raise sqlite3.OperationalError(f"the database {what} {path} is read-only")

    async def head(self) -> int:
        """Return the greatest sequence committed by anyone (on a reader thread, like every read of the log)."""
        return await self._read(lambda connection: _meta(connection, "last_sequence"))

    async def entries_after(self, after_sequence: int, limit: int) -> list[Entry]:
        """Return up to ``limit`` committed entries of both kinds after ``after_sequence``, in order."""

        def read(connection: sqlite3.Connection) -> list[Entry]:
            events = _events(
                connection,
                f"SELECT {EVENT_COLUMNS} FROM events WHERE sequence > ? ORDER BY sequence LIMIT ?",
                (after_sequence, limit),
            )
            inbound = _inbound(
                connection,
                f"SELECT {INBOUND_COLUMNS} FROM inbound WHERE sequence > ? ORDER BY sequence LIMIT ?",
                (after_sequence, limit),
            )
            return merge_entries(events, inbound, limit)

        return await self._read(read)

    async def wait_for_commits(self, within: float) -> None:
        """Poll until another connection commits entries, or time is up.

        A commit changes ``PRAGMA data_version``; only a head past this store's own last commit is news. This
        store's commits reach the tailer directly, and entries another process committed before one of them are
        read as the gap they leave (sequences follow commit order). Without that test, a busy writer would wake
        its tailer for a read after each of its own commits.

        The poll runs on a reader thread: SQLite can block inside a read for seconds (it retries on its own when
        the WAL index is not writable, whatever the busy timeout), and the writer's event loop must not. The
        version is comparable only within one connection, so it is read on that thread's connection, always
        the same one.
        """
        deadline = time.monotonic() + within
        while True:
            try:
                version, head = await self._read(_version_and_head)
            except StoreUnavailableError:
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                return
            changed = self._data_version is not None and version != self._data_version
            self._data_version = version
            if changed and (self._own_head is None or head > self._own_head):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(self._poll_interval, remaining))

    # -- the reading face ---------------------------------------------------------------

    async def _read(self, work: Callable[[sqlite3.Connection], _T], *, inline: bool = False) -> _T:
        """Run ``work`` in one read transaction on a reader thread, or on the caller's thread when ``inline``."""

        def run() -> _T:
            connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
            if connection is not None and self._local.generation != self._generation:
                with self._lock:
                    self._reader_connections.remove(connection)
                connection.close()
                connection = None
            if connection is None:
                connection = self._connect()
                connection.execute("PRAGMA query_only = 1")
                self._local.connection = connection
                self._local.generation = self._generation
                with self._lock:
                    self._reader_connections.append(connection)
            connection.execute("BEGIN")  # One consistent snapshot for everything `work` reads.
            try:
                return work(connection)
            finally:
                connection.execute("COMMIT")

        try:
            if inline:
                return run()
            return await asyncio.get_running_loop().run_in_executor(self._readers, run)
        except sqlite3.Error as ex:
            raise StoreUnavailableError(f"SQLite database {self._path} cannot be read: {ex}") from None

    async def history(self, tracking_id: str) -> list[StoredEvent]:
        """Return every event of a message, in precedence order (its current status last)."""
        # A few rows through an index: cheaper on the event loop than a hop to a reader thread and back.
        return await self._read(lambda connection: _events(connection, _HISTORY, (tracking_id,)), inline=True)

    async def replies(self, tracking_id: str) -> list[StoredInbound]:
        """Return the inbound messages that answer a message, oldest first."""
        return await self._read(lambda connection: _inbound(connection, _REPLIES, (tracking_id,)), inline=True)

    async def message(self, tracking_id: str) -> MessageState | None:
        """Return a message's latest events and replies with their totals, read together (None when it has no
        event); its current status is the last of its events in precedence order."""

        def read(connection: sqlite3.Connection) -> MessageState | None:
            key = (tracking_id,)
            history, more_events = bounded(_events(connection, _ONE_MESSAGE[0], key), MAX_EVENTS_PER_MESSAGE)
            if not history:
                return None
            replies, more_replies = bounded(_inbound(connection, _ONE_MESSAGE[1], key), MAX_REPLIES_PER_MESSAGE)
            return MessageState(
                history[-1],
                history,
                replies,
                connection.execute(_ONE_MESSAGE[2], key).fetchone()[0] if more_events else len(history),
                connection.execute(_ONE_MESSAGE[3], key).fetchone()[0] if more_replies else len(replies),
            )

        return await self._read(read, inline=True)

    async def events_after(self, after_sequence: int, event_filter: EventFilter, limit: int) -> Sequence[Entry]:
        """Return up to ``limit`` entries of the filter with a sequence greater than ``after_sequence``, in order."""
        where, params = _where(event_filter, "")
        if event_filter.inbound:
            return await self._read(
                lambda connection: _inbound(
                    connection,
                    f"SELECT {INBOUND_COLUMNS} FROM inbound WHERE sequence > ?{where} ORDER BY sequence LIMIT ?",
                    (after_sequence, *params, limit),
                )
            )
        return await self._read(
            lambda connection: _events(
                connection,
                f"SELECT {EVENT_COLUMNS} FROM events WHERE sequence > ?{where} ORDER BY sequence LIMIT ?",
                (after_sequence, *params, limit),
            )
        )

    async def snapshot_page(
        self, event_filter: EventFilter, as_of: int, after_tracking_id: str, limit: int
    ) -> list[StoredEvent]:
        """One page of a snapshot as of a sequence (see ``LogReader``), on a reader thread."""
        sql = snapshot_page_sql("?", "CROSS JOIN", event_filter)
        params = snapshot_page_parameters(event_filter, as_of, after_tracking_id, limit)
        return await self._read(lambda connection: _events(connection, sql, params))

    async def statuses(self, tracking_ids: Sequence[str], *, history: bool = False) -> dict[str, MessageState]:
        """Return the messages found among ``tracking_ids``, with their history and replies when asked."""
        ids = json.dumps(list(tracking_ids))

        def read(connection: sqlite3.Connection) -> dict[str, MessageState]:
            current = _events(
                connection,
                f"SELECT {event_columns('e.')} FROM messages m JOIN events e ON e.sequence = m.current_sequence"
                " WHERE m.tracking_id IN (SELECT value FROM json_each(?))",
                (ids,),
            )
            found = {event.tracking_id: MessageState(event, [], []) for event in current}
            if history and found:
                with_latest(
                    found,
                    _totalled_events(
                        connection, latest_events_sql("tracking_id IN (SELECT value FROM json_each(?))"), (ids,)
                    ),
                    _totalled_inbound(
                        connection,
                        latest_replies_sql("reference_tracking_id IN (SELECT value FROM json_each(?))"),
                        (ids,),
                    ),
                )
            return found

        return await self._read(read)

    async def list_messages(
        self, campaign_tracking_id: str, statuses: frozenset[int], after_tracking_id: str, limit: int
    ) -> list[StoredEvent]:
        """Return the current-status events of up to ``limit`` messages of a campaign whose current status is one
        of ``statuses`` (all when empty), with a tracking id after ``after_tracking_id``, in tracking id order."""
        where, params = "", ()  # type: tuple[str, tuple[object, ...]]
        if statuses:
            where, params = f" AND m.status IN ({', '.join('?' * len(statuses))})", tuple(sorted(statuses))
        return await self._read(
            lambda connection: _events(
                connection,
                f"SELECT {event_columns('e.')} FROM messages m JOIN events e ON e.sequence = m.current_sequence"
                f" WHERE m.campaign_tracking_id = ?{where} AND m.tracking_id > ? ORDER BY m.tracking_id LIMIT ?",
                (campaign_tracking_id, *params, after_tracking_id, limit),
            )
        )

    async def campaign_summary(self, campaign_tracking_id: str) -> CampaignSummary | None:
        """Return the campaign's counts by current status and the sequence they are consistent with."""

        def read(connection: sqlite3.Connection) -> CampaignSummary | None:
            times = connection.execute(
                "SELECT first_update_us, latest_update_us FROM campaigns WHERE campaign_tracking_id = ?",
                (campaign_tracking_id,),
            ).fetchone()
            if times is None:
                return None
            counts = connection.execute(
                "SELECT status, messages FROM campaign_counts WHERE campaign_tracking_id = ? AND messages > 0"
                " ORDER BY status",
                (campaign_tracking_id,),
            ).fetchall()
            return CampaignSummary(dict(counts), times[0], times[1], _meta(connection, "last_sequence"))

        return await self._read(read, inline=True)

    async def due_checks(self, changed_before_us: int, limit: int) -> list[DueCheck]:
        """Return up to ``limit`` messages due for reconciliation, those due longest first."""

        def read(connection: sqlite3.Connection) -> list[DueCheck]:
            rows = connection.execute(
                f"SELECT {event_columns('e.')}, m.checks"
                " FROM messages m JOIN events e ON e.sequence = m.current_sequence"
                " WHERE m.check_from_us IS NOT NULL AND m.check_from_us < ? ORDER BY m.check_from_us LIMIT ?",
                (changed_before_us, limit),
            ).fetchall()
            return [DueCheck(_event(row), row[-1]) for row in rows]

        return await self._read(read)

    async def last_sequence(self) -> int:
        """Return the greatest sequence committed (0 when none)."""
        return await self._read(lambda connection: _meta(connection, "last_sequence"), inline=True)

    async def pruned_through(self) -> int:
        """Return the greatest sequence ever pruned (0 when none)."""
        return await self._read(lambda connection: _meta(connection, "pruned_through"), inline=True)

    async def quarantined(self, ids: Sequence[int] | None = None) -> list[Quarantined]:
        """Return the bodies in quarantine (these ids, or all), the longest-held first."""
        where = f" WHERE id IN ({', '.join('?' * len(ids))})" if ids is not None else ""
        return await self._read(
            lambda connection: [
                Quarantined(*row)
                for row in connection.execute(
                    f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine{where} ORDER BY received_us, id", tuple(ids or ())
                )
            ]
        )

    async def quarantine_size(self) -> tuple[int, int]:
        """Return how many bodies the quarantine holds, and their bytes."""
        return await self._read(
            lambda connection: (
                connection.execute("SELECT count(*) FROM quarantine").fetchone()[0],
                _meta(connection, "quarantine_bytes"),
            ),
            inline=True,
        )


def _migrate(connection: sqlite3.Connection, migrations: Sequence[str] = _MIGRATIONS) -> None:
    """Bring the schema up to the last of ``migrations`` (tests pass fewer, to make an older database)."""
    if connection.execute("PRAGMA user_version").fetchone()[0] >= len(migrations):
        return
    connection.execute("BEGIN IMMEDIATE")  # Several processes may start at once: one upgrades, the rest wait.
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(migrations[version:], start=version + 1):
            for statement in script.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {number}")
        connection.execute("COMMIT")
        if 0 < version < len(migrations):  # An existing database (a new one is just created).
            _LOGGER.info("schema upgraded", extra={"from_version": version, "to_version": len(migrations)})
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _plan(connection: sqlite3.Connection, appends: Sequence[AppendStatus], last: int, receive_us: int) -> StatusPlan:
    callbacks = [append.callback for append in appends]
    keys = [event_key(callback) for callback in callbacks]
    existing: set[EventKey] = set(
        connection.execute(
            # A join from the keys drives lookups through the unique index.
            f"WITH batch (tracking_id, status_key, update_us) AS (VALUES {', '.join(['(?, ?, ?)'] * len(keys))})"
            " SELECT e.tracking_id, e.status_key, e.update_us FROM batch"
            " JOIN events e USING (tracking_id, status_key, update_us)",
            [part for key in keys for part in key],
        ).fetchall()
    )
    ids = tracking_ids(callbacks)
    current = {
        row[0]: Current(row[1], row[2], row[3], row[4], row[5])
        for row in connection.execute(
            "SELECT tracking_id, campaign_tracking_id, status, update_us, rank, current_sequence FROM messages"
            f" WHERE tracking_id IN ({', '.join('?' * len(ids))})",
            ids,
        )
    }
    return plan_status(
        callbacks,
        keys,
        existing=existing,
        current=current,
        last_sequence=last,
        receive_us=receive_us,
        sources=[append.source for append in appends],
    )


def _plan_inbound(connection: sqlite3.Connection, messages: Sequence[Any], last: int, receive_us: int) -> InboundPlan:
    keys = [inbound_key(message) for message in messages]
    existing = {
        row[0]
        for row in connection.execute(
            f"SELECT content_key FROM inbound WHERE content_key IN ({', '.join('?' * len(keys))})", keys
        )
    }
    return plan_inbound(messages, keys, existing=existing, last_sequence=last, receive_us=receive_us)


def _apply(connection: sqlite3.Connection, plan: StatusPlan, inbound: InboundPlan, receive_us: int) -> None:
    if plan.events:
        connection.executemany(
            "INSERT INTO events (sequence, tracking_id, campaign_tracking_id, status_key, status, status_name, rank,"
            " update_us, receive_us, was_current, callback, previous_status, source)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    new.event.sequence,
                    new.event.tracking_id,
                    new.event.campaign_tracking_id,
                    new.status_key,
                    new.event.status,
                    new.event.status_name,
                    new.rank,
                    new.event.update_us,
                    new.event.receive_us,
                    new.event.is_current,
                    new.event.callback,
                    new.event.previous_status,
                    new.event.source,
                )
                for new in plan.events
            ],
        )
        connection.executemany(
            "INSERT INTO messages (tracking_id, campaign_tracking_id, current_sequence, update_us, rank, status,"
            " check_from_us, checks) VALUES (?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (tracking_id) DO UPDATE SET"
            " campaign_tracking_id = excluded.campaign_tracking_id, current_sequence = excluded.current_sequence,"
            " update_us = excluded.update_us, rank = excluded.rank, status = excluded.status,"
            " check_from_us = excluded.check_from_us, checks = 0",
            [
                (
                    tracking_id,
                    now.campaign_tracking_id,
                    now.sequence,
                    now.update_us,
                    now.rank,
                    now.status,
                    check_from(now.status, receive_us),
                )
                for tracking_id, now in plan.messages.items()
            ],
        )
        _add_counts(connection, plan.counts)
        connection.executemany(
            "INSERT INTO campaigns (campaign_tracking_id, first_update_us, latest_update_us) VALUES (?, ?, ?)"
            " ON CONFLICT (campaign_tracking_id) DO UPDATE SET"
            " first_update_us = min(first_update_us, excluded.first_update_us),"
            " latest_update_us = max(latest_update_us, excluded.latest_update_us)",
            [(campaign, first, latest) for campaign, (first, latest) in plan.campaign_times.items()],
        )
    if inbound.entries:
        connection.executemany(
            "INSERT INTO inbound (sequence, content_key, campaign_tracking_id, reference_tracking_id, receive_us,"
            " message) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    new.entry.sequence,
                    new.key,
                    new.entry.campaign_tracking_id,
                    new.entry.reference_tracking_id,
                    new.entry.receive_us,
                    new.entry.message,
                )
                for new in inbound.entries
            ],
        )
    if plan.events or inbound.entries:
        _set_meta(connection, "last_sequence", inbound.last_sequence)


def _version_and_head(connection: sqlite3.Connection) -> tuple[int, int]:
    return connection.execute("PRAGMA data_version").fetchone()[0], _meta(connection, "last_sequence")


def _where(event_filter: EventFilter, prefix: str) -> tuple[str, tuple[object, ...]]:
    clauses = ""
    params: tuple[object, ...] = ()
    if event_filter.campaign_tracking_id is not None:
        clauses += f" AND {prefix}campaign_tracking_id = ?"
        params += (event_filter.campaign_tracking_id,)
    if event_filter.statuses:
        statuses = sorted(event_filter.statuses)
        clauses += f" AND {prefix}status IN ({', '.join('?' * len(statuses))})"
        params += tuple(statuses)
    return clauses, params


def _events(connection: sqlite3.Connection, sql: str, params: Sequence[object]) -> list[StoredEvent]:
    return [_event(row) for row in connection.execute(sql, params)]


def _event(row: Sequence[Any]) -> StoredEvent:
    return StoredEvent(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), row[8], row[9], row[10])


def _add_counts(connection: sqlite3.Connection, counts: Mapping[tuple[str, int], int]) -> None:
    if counts:
        connection.executemany(
            "INSERT INTO campaign_counts (campaign_tracking_id, status, messages) VALUES (?, ?, ?)"
            " ON CONFLICT (campaign_tracking_id, status) DO UPDATE SET messages = messages + excluded.messages",
            [(campaign, status, delta) for (campaign, status), delta in counts.items()],
        )


def _inbound(connection: sqlite3.Connection, sql: str, params: Sequence[object]) -> list[StoredInbound]:
    return [StoredInbound(*row) for row in connection.execute(sql, params)]


def _totalled_events(
    connection: sqlite3.Connection, sql: str, params: Sequence[object]
) -> list[tuple[StoredEvent, int]]:
    return [(_event(row), row[11]) for row in connection.execute(sql, params)]


def _totalled_inbound(
    connection: sqlite3.Connection, sql: str, params: Sequence[object]
) -> list[tuple[StoredInbound, int]]:
    return [(StoredInbound(*row[:5]), row[5]) for row in connection.execute(sql, params)]


def _meta(connection: sqlite3.Connection, key: str) -> int:
    row = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def _set_meta(connection: sqlite3.Connection, key: str, value: int) -> None:
    connection.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def _quarantine(connection: sqlite3.Connection, job: Quarantine, now_us: int) -> int:
    """Keep a refused body, or count another attempt of one kept; then keep the whole within its bound."""
    digest = body_digest(job.body)
    row = connection.execute(
        "UPDATE quarantine SET attempts = attempts + 1, last_us = ?, peer = ?, status = ?, reason = ?, detail = ?"
        " WHERE body_hash = ? RETURNING id",
        (now_us, job.peer, job.status, job.reason, job.detail, digest),
    ).fetchone()
    if row is not None:
        return int(row[0])
    (quarantine_id,) = connection.execute(
        "INSERT INTO quarantine (body_hash, received_us, last_us, peer, status, reason, detail, attempts, size, body,"
        " kind) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?) RETURNING id",
        (digest, now_us, now_us, job.peer, job.status, job.reason, job.detail, cost := quarantine_cost(job), job.body,
         job.kind),
    ).fetchone()  # fmt: skip
    total = _meta(connection, "quarantine_bytes") + cost
    surplus = connection.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0] - job.max_entries
    if total > job.max_bytes or surplus > 0:
        oldest = connection.execute("SELECT id, size FROM quarantine ORDER BY last_us, id LIMIT 1000").fetchall()
        doomed = oldest_beyond(oldest, total - job.max_bytes, surplus)
        connection.execute(f"DELETE FROM quarantine WHERE id IN ({', '.join('?' * len(doomed))})", doomed)
        total -= sum(size for id_, size in oldest if id_ in doomed)
    _set_meta(connection, "quarantine_bytes", total)
    return int(quarantine_id)


def _drop_quarantined(connection: sqlite3.Connection, job: DropQuarantined) -> int:
    where, params = "", ()  # type: tuple[str, tuple[int, ...]]
    if job.ids is not None:
        where, params = f" WHERE id IN ({', '.join('?' * len(job.ids))})", job.ids
    elif job.seen_before_us is not None:
        where, params = " WHERE last_us < ?", (job.seen_before_us,)
    freed = connection.execute(f"DELETE FROM quarantine{where} RETURNING size", params).fetchall()
    if freed:
        _set_meta(
            connection, "quarantine_bytes", max(0, _meta(connection, "quarantine_bytes") - sum(r[0] for r in freed))
        )
    return len(freed)


def _prune_chunk(connection: sqlite3.Connection, cutoff_us: int, chunk: int) -> int:
    """Delete up to ``chunk`` of the oldest entries of each kind received before the cutoff, and repair what
    pointed at them."""
    deleted = connection.execute(
        "DELETE FROM events WHERE sequence IN"
        " (SELECT sequence FROM events WHERE receive_us < ? ORDER BY sequence LIMIT ?)"
        " RETURNING sequence, tracking_id",
        (cutoff_us, chunk),
    ).fetchall()
    replies = connection.execute(
        "DELETE FROM inbound WHERE sequence IN"
        " (SELECT sequence FROM inbound WHERE receive_us < ? ORDER BY sequence LIMIT ?) RETURNING sequence",
        (cutoff_us, chunk),
    ).fetchall()
    if not deleted and not replies:
        return 0
    connection.execute(
        "INSERT INTO meta (key, value) VALUES ('pruned_through', ?)"
        " ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
        (max(row[0] for row in deleted + replies),),
    )
    # A message whose current event was pruned takes its best remaining event as current, or is forgotten.
    counts: dict[tuple[str, int], int] = {}
    for tracking_id, campaign, status in connection.execute(
        "SELECT tracking_id, campaign_tracking_id, status FROM messages m"
        " WHERE tracking_id IN (SELECT value FROM json_each(?))"
        " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.sequence = m.current_sequence)",
        (json.dumps(sorted({tracking_id for _, tracking_id in deleted})),),
    ).fetchall():
        counts[(campaign, status)] = counts.get((campaign, status), 0) - 1
        connection.execute("DELETE FROM messages WHERE tracking_id = ?", (tracking_id,))
        for now in connection.execute(
            "INSERT INTO messages (tracking_id, campaign_tracking_id, current_sequence, update_us, rank, status)"
            " SELECT tracking_id, campaign_tracking_id, sequence, update_us, rank, status FROM events"
            f" WHERE tracking_id = ? ORDER BY {order_by(descending=True)} LIMIT 1"
            " RETURNING campaign_tracking_id, status",
            (tracking_id,),
        ).fetchall():
            counts[(now[0], now[1])] = counts.get((now[0], now[1]), 0) + 1
    _add_counts(connection, {key: delta for key, delta in counts.items() if delta})
    return len(deleted) + len(replies)
