"""Durable storage of status events: the Store interface and its embedded SQLite engine.

Every distinct status event (tracking id, status name compared case-insensitively,
``updatedDate`` as an instant) is stored once, with a sequence that strictly
increases and is never reused. Writes go through one writer thread that commits
every callback waiting for it in one transaction (group commit); a caller's
``append`` returns only after the transaction holding its row is durable, and
committed events are handed to ``on_commit`` on the caller's event loop in
sequence order — that is where the broker publishes them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from routee.callbacks.v1 import callback_pb2 as pb
from service.convert import lifecycle_rank, normalise_status_name
from service.errors import StartupError, StoreUnavailableError
from service.events import EventFilter, StoredEvent

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: never reused, even after pruning
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
"""

_EVENT_COLUMNS = (
    "sequence, tracking_id, campaign_tracking_id, status, status_name, update_us, receive_us, was_current, callback"
)


class Store(Protocol):
    """What the service needs from a store; SqliteStore is the embedded engine."""

    async def append(self, callback: pb.ViberCallback) -> StoredEvent | None:
        """Store a callback durably; return its event, or None for a duplicate."""

    async def history(self, tracking_id: str) -> list[StoredEvent]:
        """Return every event of a message, oldest first by (updatedDate, rank, sequence)."""

    async def events_after(self, after_sequence: int, event_filter: EventFilter, limit: int) -> list[StoredEvent]:
        """Return up to ``limit`` events of the filter with a greater sequence, in order."""

    async def snapshot(self, event_filter: EventFilter) -> tuple[list[StoredEvent], int]:
        """Return the current-status event of every message of the filter and the sequence it is consistent with."""

    async def last_sequence(self) -> int:
        """Return the greatest sequence ever assigned (0 when none)."""

    async def probe(self) -> None:
        """Write to the store once; raise StoreUnavailableError when it cannot."""

    async def prune(self, received_before: float) -> int:
        """Delete events received before this time (seconds since the epoch); return how many."""

    async def pruned_through(self) -> int:
        """Return the greatest sequence ever pruned (0 when none): resuming after less would miss events."""


# A maintenance job runs on the writer connection inside the batch transaction; it gets the batch time.
_Maintenance = Callable[[sqlite3.Connection, int], int]


@dataclass(slots=True)
class _Pending:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    work: pb.ViberCallback | _Maintenance


_STOP = object()


class SqliteStore:
    """The embedded store: one SQLite file in WAL mode, one writer thread, group commit."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        on_commit: Callable[[Sequence[StoredEvent]], None] = lambda events: None,
        observe_commit: Callable[[float, int], None] = lambda seconds, size: None,
        clock: Callable[[], float] = time.time,
        max_batch: int = 512,
        busy_timeout_ms: int = 1000,
    ) -> None:
        self._path = path
        self._synchronous = synchronous
        self._on_commit = on_commit
        self._observe_commit = observe_commit
        self._clock = clock
        self._max_batch = max_batch
        self._busy_timeout_ms = busy_timeout_ms
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store-reader")
        self._local = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    # -- life cycle -------------------------------------------------------------------

    def open(self) -> None:
        """Create the schema if needed and start the writer thread; raise StartupError if the file is unusable."""
        try:
            connection = self._connect()
            connection.executescript(_SCHEMA)
        except sqlite3.Error as ex:
            raise StartupError(f"cannot open database {self._path}: {ex}") from None
        self._writer = threading.Thread(target=self._write_loop, args=(connection,), name="store-writer", daemon=True)
        self._writer.start()

    def close(self) -> None:
        """Finish the writes already queued, then close every connection."""
        if self._writer is not None:
            self._queue.put(_STOP)
            self._writer.join()
            self._writer = None
        self._readers.shutdown(wait=True)
        with self._lock:
            for connection in self._reader_connections:
                connection.close()
            self._reader_connections.clear()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        connection.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(f"PRAGMA synchronous = {self._synchronous}")
        return connection

    # -- writes -----------------------------------------------------------------------

    async def append(self, callback: pb.ViberCallback) -> StoredEvent | None:
        """Store a callback durably; return its event, or None when it is a duplicate."""
        event: StoredEvent | None = await self._submit(callback)
        return event

    async def probe(self) -> None:
        """Write to the store once through the writer; raise StoreUnavailableError when it cannot."""
        await self._submit(_write_probe)

    async def prune(self, received_before: float, *, chunk: int = 5000) -> int:
        """Delete events received before ``received_before``, a chunk per transaction; return how many."""
        cutoff_us = int(received_before * 1_000_000)
        total = 0
        while deleted := await self._submit(lambda connection, _: _prune_chunk(connection, cutoff_us, chunk)):
            total += deleted
        return total

    async def _submit(self, work: pb.ViberCallback | _Maintenance) -> Any:
        if self._writer is None:
            raise StoreUnavailableError("the store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Pending(loop, future, work))
        # A caller that goes away cancels only its wait: the queued write still happens and is published.
        return await future

    def _write_loop(self, connection: sqlite3.Connection) -> None:
        stopping = False
        while not stopping:
            batch: list[_Pending] = []
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, _Pending)
                batch.append(item)
                if len(batch) >= self._max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write_batch(connection, batch)
        connection.close()

    def _write_batch(self, connection: sqlite3.Connection, batch: list[_Pending]) -> None:
        receive_us = int(self._clock() * 1_000_000)
        started = time.perf_counter()
        try:
            connection.execute("BEGIN IMMEDIATE")
            callbacks = [item.work for item in batch if isinstance(item.work, pb.ViberCallback)]
            events = iter(_insert_callbacks(connection, callbacks, receive_us))
            results = [
                next(events) if isinstance(item.work, pb.ViberCallback) else item.work(connection, receive_us)
                for item in batch
            ]
            connection.execute("COMMIT")
            self._observe_commit(time.perf_counter() - started, len(batch))
        except sqlite3.Error as ex:
            if connection.in_transaction:
                try:
                    connection.rollback()
                except sqlite3.Error:
                    _LOGGER.exception("rollback failed")
            _LOGGER.warning("store write failed: %s", ex, extra={"batch_size": len(batch)})
            error = StoreUnavailableError(f"the store cannot write: {ex}")
            for item in batch:
                item.loop.call_soon_threadsafe(_fail, item.future, error)
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Pending, Any]]] = {}
        for item, result in zip(batch, results, strict=True):
            by_loop.setdefault(item.loop, []).append((item, result))
        for loop, done in by_loop.items():
            try:
                loop.call_soon_threadsafe(self._deliver, done)
            except RuntimeError:  # The caller's loop is closed; nobody waits for these.
                _LOGGER.warning("committed %d events for a closed event loop", len(done))

    def _deliver(self, done: list[tuple[_Pending, Any]]) -> None:
        events = [event for _, event in done if isinstance(event, StoredEvent)]
        if events:
            self._on_commit(events)
        for item, event in done:
            if not item.future.done():
                item.future.set_result(event)

    # -- reads ------------------------------------------------------------------------

    async def _read(self, work: Callable[[sqlite3.Connection], _T], *, inline: bool = False) -> _T:
        """Run ``work`` in one read transaction on a reader thread, or on the caller's thread when ``inline``."""

        def run() -> _T:
            connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
            if connection is None:
                connection = self._connect()
                connection.execute("PRAGMA query_only = 1")
                self._local.connection = connection
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
            raise StoreUnavailableError(f"the store cannot read: {ex}") from None

    async def history(self, tracking_id: str) -> list[StoredEvent]:
        """Return every event of a message, oldest first by (updatedDate, rank, sequence)."""
        # A few rows through an index: cheaper on the event loop than a hop to a reader thread and back.
        return await self._read(
            lambda connection: _events(
                connection,
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE tracking_id = ? ORDER BY update_us, rank, sequence",
                (tracking_id,),
            ),
            inline=True,
        )

    async def events_after(self, after_sequence: int, event_filter: EventFilter, limit: int) -> list[StoredEvent]:
        """Return up to ``limit`` events of the filter with a sequence greater than ``after_sequence``, in order."""
        where, params = _where(event_filter, "")
        return await self._read(
            lambda connection: _events(
                connection,
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE sequence > ?{where} ORDER BY sequence LIMIT ?",
                (after_sequence, *params, limit),
            )
        )

    async def snapshot(self, event_filter: EventFilter) -> tuple[list[StoredEvent], int]:
        """Return the current-status event of every message of the filter, and the last sequence it includes."""
        where, params = _where(event_filter, "e.")
        columns = ", ".join(f"e.{column.strip()}" for column in _EVENT_COLUMNS.split(","))

        def read(connection: sqlite3.Connection) -> tuple[list[StoredEvent], int]:
            events = _events(
                connection,
                f"SELECT {columns} FROM messages m JOIN events e ON e.sequence = m.current_sequence"
                f" WHERE 1 = 1{where} ORDER BY e.sequence",
                params,
            )
            return events, _last_sequence(connection)

        return await self._read(read)

    async def last_sequence(self) -> int:
        """Return the greatest sequence ever assigned (0 when none)."""
        return await self._read(_last_sequence)

    async def pruned_through(self) -> int:
        """Return the greatest sequence ever pruned (0 when none)."""
        return await self._read(lambda connection: _meta(connection, "pruned_through"))


def _insert_callbacks(
    connection: sqlite3.Connection, callbacks: Sequence[pb.ViberCallback], receive_us: int
) -> list[StoredEvent | None]:
    """Store a batch of callbacks with a few statements; return each one's event, or None for a duplicate.

    The writer thread is the only writer, so it assigns sequences itself, after the greatest ever assigned.
    """
    if not callbacks:
        return []
    keys = [
        (
            callback.tracking_id,
            normalise_status_name(callback.status.name),
            callback.status.update_time.ToMicroseconds(),
        )
        for callback in callbacks
    ]
    seen = set(
        connection.execute(
            # A join from the keys drives lookups through the unique index.
            f"WITH batch (tracking_id, status_key, update_us) AS (VALUES {', '.join(['(?, ?, ?)'] * len(keys))})"
            " SELECT e.tracking_id, e.status_key, e.update_us FROM batch"
            " JOIN events e USING (tracking_id, status_key, update_us)",
            [part for key in keys for part in key],
        ).fetchall()
    )
    tracking_ids = sorted({key[0] for key in keys})
    current: dict[str, tuple[int, int]] = {
        tracking_id: (update_us, rank)
        for tracking_id, update_us, rank in connection.execute(
            "SELECT tracking_id, update_us, rank FROM messages"
            f" WHERE tracking_id IN ({', '.join('?' * len(tracking_ids))})",
            tracking_ids,
        )
    }
    sequence = _last_sequence(connection)
    results: list[StoredEvent | None] = []
    event_rows: list[tuple[object, ...]] = []
    message_rows: dict[str, tuple[object, ...]] = {}
    for callback, key in zip(callbacks, keys, strict=True):
        if key in seen:
            results.append(None)
            continue
        seen.add(key)
        tracking_id, status_key, update_us = key
        status = callback.status
        rank = lifecycle_rank(status.status)
        before = current.get(tracking_id)
        # The new event has the greatest sequence, so it wins ties of (update_us, rank).
        is_current = before is None or (update_us, rank) >= before
        sequence += 1
        blob = callback.SerializeToString()
        campaign = callback.campaign_tracking_id
        event_rows.append(
            (
                sequence,
                tracking_id,
                campaign,
                status_key,
                status.status,
                status.name,
                rank,
                update_us,
                receive_us,
                is_current,
                blob,
            )
        )
        if is_current:
            current[tracking_id] = (update_us, rank)
            message_rows[tracking_id] = (tracking_id, campaign, sequence, update_us, rank)
        results.append(
            StoredEvent(
                sequence, tracking_id, campaign, status.status, status.name, update_us, receive_us, is_current, blob
            )
        )
    connection.executemany(
        "INSERT INTO events (sequence, tracking_id, campaign_tracking_id, status_key, status, status_name, rank,"
        " update_us, receive_us, was_current, callback) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        event_rows,
    )
    connection.executemany(
        "INSERT INTO messages (tracking_id, campaign_tracking_id, current_sequence, update_us, rank)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tracking_id) DO UPDATE SET"
        " campaign_tracking_id = excluded.campaign_tracking_id, current_sequence = excluded.current_sequence,"
        " update_us = excluded.update_us, rank = excluded.rank",
        message_rows.values(),
    )
    return results


def _fail(future: asyncio.Future[Any], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


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


def _events(connection: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> list[StoredEvent]:
    return [
        StoredEvent(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), row[8])
        for row in connection.execute(sql, params)
    ]


def _last_sequence(connection: sqlite3.Connection) -> int:
    row = connection.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return int(row[0]) if row else 0


def _meta(connection: sqlite3.Connection, key: str) -> int:
    row = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def _write_probe(connection: sqlite3.Connection, now_us: int) -> int:
    connection.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('probed_at_us', ?)", (now_us,))
    return 0


def _prune_chunk(connection: sqlite3.Connection, cutoff_us: int, chunk: int) -> int:
    """Delete up to ``chunk`` of the oldest events received before the cutoff, and repair what pointed at them."""
    deleted = connection.execute(
        "DELETE FROM events WHERE sequence IN"
        " (SELECT sequence FROM events WHERE receive_us < ? ORDER BY sequence LIMIT ?)"
        " RETURNING sequence, tracking_id",
        (cutoff_us, chunk),
    ).fetchall()
    if not deleted:
        return 0
    connection.execute(
        "INSERT INTO meta (key, value) VALUES ('pruned_through', ?)"
        " ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
        (max(sequence for sequence, _ in deleted),),
    )
    # A message whose current event was pruned takes its best remaining event as current, or is forgotten.
    for (tracking_id,) in connection.execute(
        "SELECT tracking_id FROM messages m WHERE tracking_id IN (SELECT value FROM json_each(?))"
        " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.sequence = m.current_sequence)",
        (json.dumps(sorted({tracking_id for _, tracking_id in deleted})),),
    ).fetchall():
        connection.execute("DELETE FROM messages WHERE tracking_id = ?", (tracking_id,))
        connection.execute(
            "INSERT INTO messages (tracking_id, campaign_tracking_id, current_sequence, update_us, rank)"
            " SELECT tracking_id, campaign_tracking_id, sequence, update_us, rank FROM events"
            " WHERE tracking_id = ? ORDER BY update_us DESC, rank DESC, sequence DESC LIMIT 1",
            (tracking_id,),
        )
    return len(deleted)
