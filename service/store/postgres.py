"""The PostgreSQL engine: one database shared by every instance.

Commit order: a transaction that appends to the log first locks the one
``last_sequence`` row (``SELECT ... FOR UPDATE``), takes its sequences after
it, and holds the lock until it commits. PostgreSQL makes a transaction
visible before it releases its locks, so when the next writer gets the row,
every smaller sequence is already visible: readers never see a hole that fills
later. (A plain SEQUENCE hands out numbers in call order, not commit order; a
follower would skip events.) The lock is short — one batch of one instance —
and each instance commits whole batches under it.

``NOTIFY`` after each append only wakes the other instances' followers; the
tables are the truth, and followers also look every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

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

#: The channel followers LISTEN on; the payload is the new head, informative only.
CHANNEL = "routee_callbacks_log"
# Advisory lock keys (any constants unlikely to collide with another application's).
_MIGRATION_LOCK = 0x52435F4D  # "RC_M"
_PRUNE_LOCK = 0x52435F50  # "RC_P"
_RECONCILE_LOCK = 0x52435F52  # "RC_R"

# Every connection: bounded waits, so a dead server or a stuck peer turns into 503s, not hangs.
_CONNECTION: dict[str, Any] = {
    "connect_timeout": 2,
    "application_name": "routee-callbacks",
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    "tcp_user_timeout": 5000,
}
# plan_cache_mode: psycopg prepares statements it runs often; a generic plan made while a table was small stays
# when it has grown (measured: the duplicate check went from 0.2 ms to over 4 ms within a minute).
# synchronous_commit=on: a 200 promises the callback survives the database host, whatever the server's or the
# role's default (off or local would acknowledge what a crash of the host can lose).
_WRITER_OPTIONS = (
    "-c lock_timeout=1500 -c statement_timeout=5000 -c idle_in_transaction_session_timeout=10000"
    " -c plan_cache_mode=force_custom_plan -c synchronous_commit=on"
)
#: The longest one statement of a read may run: a stuck or huge read cannot hold a pooled connection for ever.
READ_STATEMENT_TIMEOUT_MS = 30_000
_READER_OPTIONS = f"-c statement_timeout={READ_STATEMENT_TIMEOUT_MS} -c idle_in_transaction_session_timeout=10000"

_MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS events (
        sequence BIGINT PRIMARY KEY,
        tracking_id TEXT NOT NULL,
        campaign_tracking_id TEXT NOT NULL,
        status_key TEXT NOT NULL,
        status SMALLINT NOT NULL,
        status_name TEXT NOT NULL,
        rank SMALLINT NOT NULL,
        update_us BIGINT NOT NULL,
        receive_us BIGINT NOT NULL,
        was_current BOOLEAN NOT NULL,
        callback BYTEA NOT NULL,
        UNIQUE (tracking_id, status_key, update_us)
    );
    CREATE INDEX IF NOT EXISTS events_by_campaign ON events (campaign_tracking_id, sequence);
    CREATE TABLE IF NOT EXISTS messages (
        tracking_id TEXT PRIMARY KEY,
        campaign_tracking_id TEXT NOT NULL,
        current_sequence BIGINT NOT NULL,
        update_us BIGINT NOT NULL,
        rank SMALLINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS messages_by_campaign ON messages (campaign_tracking_id);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('last_sequence', 0) ON CONFLICT (key) DO NOTHING;
    """,
    # Bodies refused for their content, kept for an operator (quarantine list | replay | drop).
    """
    CREATE TABLE IF NOT EXISTS quarantine (
        id BIGSERIAL PRIMARY KEY,
        body_hash TEXT NOT NULL UNIQUE,
        received_us BIGINT NOT NULL,
        last_us BIGINT NOT NULL,
        peer TEXT NOT NULL,
        status SMALLINT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        size INTEGER NOT NULL,
        body BYTEA NOT NULL
    );
    CREATE INDEX IF NOT EXISTS quarantine_by_last ON quarantine (last_us, id);
    INSERT INTO meta (key, value) VALUES ('quarantine_bytes', 0) ON CONFLICT (key) DO NOTHING;
    """,
    # Inbound messages (replies): entries of the same log, their sequences from the same counter.
    """
    CREATE TABLE IF NOT EXISTS inbound (
        sequence BIGINT PRIMARY KEY,
        content_key TEXT NOT NULL UNIQUE,
        campaign_tracking_id TEXT NOT NULL,
        reference_tracking_id TEXT NOT NULL,
        receive_us BIGINT NOT NULL,
        message BYTEA NOT NULL
    );
    CREATE INDEX IF NOT EXISTS inbound_by_campaign ON inbound (campaign_tracking_id, sequence);
    CREATE INDEX IF NOT EXISTS inbound_by_reference ON inbound (reference_tracking_id, sequence);
    ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS kind TEXT NOT NULL DEFAULT 'status';
    """,
    # Campaign questions: each message's current status in its row, counts per campaign and status kept as
    # events are stored, and each update's previous current status (to keep counts live from a stream).
    """
    ALTER TABLE events ADD COLUMN IF NOT EXISTS previous_status SMALLINT NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN IF NOT EXISTS status SMALLINT NOT NULL DEFAULT 0;
    UPDATE messages m SET status = e.status FROM events e WHERE e.sequence = m.current_sequence;
    DROP INDEX IF EXISTS messages_by_campaign;
    CREATE INDEX IF NOT EXISTS messages_by_campaign ON messages (campaign_tracking_id, tracking_id);
    CREATE INDEX IF NOT EXISTS messages_by_campaign_status ON messages (campaign_tracking_id, status, tracking_id);
    CREATE TABLE IF NOT EXISTS campaign_counts (
        campaign_tracking_id TEXT NOT NULL,
        status SMALLINT NOT NULL,
        messages BIGINT NOT NULL,
        PRIMARY KEY (campaign_tracking_id, status)
    );
    INSERT INTO campaign_counts SELECT campaign_tracking_id, status, count(*) FROM messages GROUP BY 1, 2;
    CREATE TABLE IF NOT EXISTS campaigns (
        campaign_tracking_id TEXT PRIMARY KEY,
        first_update_us BIGINT NOT NULL,
        latest_update_us BIGINT NOT NULL
    );
    INSERT INTO campaigns SELECT campaign_tracking_id, min(update_us), max(update_us) FROM events GROUP BY 1;
    """,
    # Reconciliation with Routee's tracking API: where each event came from, and when each message whose status
    # is not final may be looked up (NULL: never; a final status 3-7, or given up).
    """
    ALTER TABLE events ADD COLUMN IF NOT EXISTS source SMALLINT NOT NULL DEFAULT 1;
    ALTER TABLE messages ADD COLUMN IF NOT EXISTS check_from_us BIGINT;
    ALTER TABLE messages ADD COLUMN IF NOT EXISTS checks INTEGER NOT NULL DEFAULT 0;
    UPDATE messages m SET check_from_us = e.receive_us FROM events e
        WHERE e.sequence = m.current_sequence AND m.status NOT IN (3, 4, 5, 6, 7);
    CREATE INDEX IF NOT EXISTS messages_to_check ON messages (check_from_us) WHERE check_from_us IS NOT NULL;
    """,
    # Snapshots and lists walk a campaign's messages in tracking id order: one index serves both (it replaces the
    # campaign's index, a prefix of it, so a callback costs no more index writes).
    """
    CREATE INDEX IF NOT EXISTS messages_by_campaign_and_id ON messages (campaign_tracking_id, tracking_id);
    DROP INDEX IF EXISTS messages_by_campaign;
    """,
)

_QUARANTINE_COLUMNS = "id, received_us, last_us, peer, status, reason, detail, attempts, body, kind"
_HISTORY = f"SELECT {EVENT_COLUMNS} FROM events WHERE tracking_id = %s ORDER BY {order_by()}"
_REPLIES = f"SELECT {INBOUND_COLUMNS} FROM inbound WHERE reference_tracking_id = %s ORDER BY sequence"
_ONE_MESSAGE = one_message_sql("%s")


class PostgresStore:
    """A PostgreSQL database as the log; see ``service.store`` for the contract."""

    def __init__(self, conninfo: str, *, pool_size: int = 4, read_timeout: float = 2.0) -> None:
        self._conninfo = conninfo
        self._name = _name(conninfo)
        self._pool_size = pool_size
        self._read_timeout = read_timeout
        self._writer: psycopg.AsyncConnection[Any] | None = None
        self._listener: psycopg.AsyncConnection[Any] | None = None
        self._lease: psycopg.AsyncConnection[Any] | None = None
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None

    def __str__(self) -> str:
        return self._name

    # -- life cycle -------------------------------------------------------------------

    def open(self) -> None:
        """Create or upgrade the schema, one instance at a time; raise StartupError when the server is unusable."""
        try:
            with psycopg.connect(self._conninfo, autocommit=True, **_CONNECTION) as connection:
                connection.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
                try:
                    _migrate(connection)
                finally:
                    connection.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
        except psycopg.Error as ex:
            raise StartupError(f"cannot open {self._name}: {_describe(ex)}") from None

    async def close(self) -> None:
        """Close every connection."""
        await self.close_writer()
        if self._lease is not None:
            await self._lease.close()
            self._lease = None
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def close_writer(self) -> None:
        """Close the writing connection; the next write opens a new one."""
        if self._writer is not None:
            with contextlib.suppress(psycopg.Error):
                await self._writer.close()
            self._writer = None

    async def hold_lease(self) -> bool:
        """Hold the reconciliation lease: a session advisory lock on a connection of its own, released by the
        server when this process or its connection goes away."""
        try:
            if self._lease is not None and not self._lease.closed:
                await self._lease.execute("SELECT 1")  # Still connected: the lock is still ours.
                return True
            self._lease = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, **_CONNECTION)
            row = await (await self._lease.execute("SELECT pg_try_advisory_lock(%s)", (_RECONCILE_LOCK,))).fetchone()
            if row and row[0]:
                return True
        except psycopg.Error:
            pass
        if self._lease is not None:
            with contextlib.suppress(psycopg.Error):
                await self._lease.close()
            self._lease = None
        return False

    async def _writer_connection(self) -> psycopg.AsyncConnection[Any]:
        if self._writer is None or self._writer.closed:
            self._writer = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, options=_WRITER_OPTIONS, **_CONNECTION
            )
        return self._writer

    # -- the writing face ---------------------------------------------------------------

    async def write(self, jobs: Sequence[Job], now_us: int) -> WriteResult:
        """Run the jobs in one transaction and commit; roll back and re-raise on any failure.

        The event loop goes on while the server works: the writer process keeps reading and validating, and what
        arrives meanwhile makes up the next batch.
        """
        try:
            connection = await self._writer_connection()
            # Pipeline mode: statements go out without waiting for each answer, so a batch costs two round trips
            # (the lock with the reads the plan needs, then the writes with the commit) while it holds the lock.
            async with connection.pipeline(), connection.transaction():
                return await self._run(connection, jobs, now_us)
        except psycopg.OperationalError as ex:  # Unreachable, restarting, lock timeout: nothing can be written now.
            await self.close_writer()
            raise StoreUnavailableError(f"{self._name} cannot be written: {_describe(ex)}") from None
        except BaseException:
            await self.close_writer()
            raise

    async def _run(self, connection: psycopg.AsyncConnection[Any], jobs: Sequence[Job], now_us: int) -> WriteResult:
        callbacks, messages = appends(jobs)
        plan, inbound = StatusPlan(), InboundPlan()
        if callbacks or messages:
            plan, inbound = await _plan(connection, callbacks, messages, now_us)
            await _apply(connection, plan, inbound, now_us)
        result = WriteResult(entries=[new.event for new in plan.events] + [new.entry for new in inbound.entries])
        statuses, replies = iter(plan.results), iter(inbound.results)
        for job in jobs:
            if isinstance(job, AppendStatus):
                result.results.append(next(statuses))
            elif isinstance(job, AppendInbound):
                result.results.append(next(replies))
            elif isinstance(job, Release):
                result.results.append(next(statuses if isinstance(job.append, AppendStatus) else replies))
                await _drop_quarantined(connection, DropQuarantined(ids=(job.quarantine_id,)))
            elif isinstance(job, Quarantine):
                result.results.append(await _quarantine(connection, job, now_us))
            elif isinstance(job, DropQuarantined):
                result.results.append(await _drop_quarantined(connection, job))
            elif isinstance(job, Reschedule):
                cursor = await connection.execute(
                    "UPDATE messages SET check_from_us = %s, checks = checks + 1"
                    " WHERE tracking_id = %s AND current_sequence = %s",
                    (job.check_from_us, job.tracking_id, job.current_sequence),
                )
                result.results.append(cursor.rowcount == 1)
            elif isinstance(job, Probe):
                await _set_meta(connection, "probed_at_us", now_us)
                result.results.append(None)
            elif isinstance(job, PruneChunk):
                result.results.append(await _prune_chunk(connection, job.cutoff_us, job.limit))
            else:
                raise TypeError(f"no such job: {job!r}")
        return result

    async def head(self) -> int:
        """Return the greatest sequence committed by any instance."""
        # Reads go through the reading pool: the writing connection may be in the middle of a transaction.
        return await self.last_sequence()

    async def entries_after(self, after_sequence: int, limit: int) -> list[Entry]:
        """Return up to ``limit`` committed entries of both kinds after ``after_sequence``, in order."""

        async def read(connection: psycopg.AsyncConnection[Any]) -> list[Entry]:
            events = await connection.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE sequence > %s ORDER BY sequence LIMIT %s",
                (after_sequence, limit),
            )
            inbound = await connection.execute(
                f"SELECT {INBOUND_COLUMNS} FROM inbound WHERE sequence > %s ORDER BY sequence LIMIT %s",
                (after_sequence, limit),
            )
            return merge_entries(_events(await events.fetchall()), _inbound(await inbound.fetchall()), limit)

        return await self._read(read)

    async def wait_for_commits(self, within: float) -> None:
        """Wait for another process's NOTIFY, or ``within`` seconds; while the server is away, just wait."""
        try:
            listener = await self._listening()
            own = self._writer.info.backend_pid if self._writer is not None and not self._writer.closed else None
            async for notification in listener.notifies(timeout=within):
                if notification.pid != own:
                    return
        except psycopg.Error:
            if self._listener is not None:
                with contextlib.suppress(psycopg.Error):
                    await self._listener.close()
                self._listener = None
            await asyncio.sleep(within)

    async def _listening(self) -> psycopg.AsyncConnection[Any]:
        if self._listener is None or self._listener.closed:
            self._listener = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, **_CONNECTION)
            await self._listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        return self._listener

    # -- the reading face ---------------------------------------------------------------

    async def _read(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]) -> _T:
        """Run ``work`` in one REPEATABLE READ transaction (one snapshot for everything it reads)."""
        if self._pool is None:
            self._pool = AsyncConnectionPool(
                self._conninfo,
                min_size=1,
                max_size=self._pool_size,
                kwargs={"autocommit": True, "options": _READER_OPTIONS, **_CONNECTION},
                timeout=self._read_timeout,
                open=False,
                name="routee-callbacks-reads",
            )
            await self._pool.open(wait=False)
        for attempt in (1, 2):
            try:
                async with self._pool.connection() as connection, connection.transaction():
                    await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    return await work(connection)
            except PoolTimeout:
                raise StoreUnavailableError(f"{self._name} cannot be read: no connection") from None
            except psycopg.OperationalError as ex:
                if attempt == 2:
                    raise StoreUnavailableError(f"{self._name} cannot be read: {_describe(ex)}") from None
                # A connection the server dropped (a restart) fails once and is discarded; its idle siblings are
                # as dead: check them all now, so that the retry, and every read after it, gets a live one.
                await self._pool.check()
        raise AssertionError("unreachable")

    async def history(self, tracking_id: str) -> list[StoredEvent]:
        """Return every event of a message, in precedence order (its current status last)."""

        async def read(connection: psycopg.AsyncConnection[Any]) -> list[StoredEvent]:
            return _events(await (await connection.execute(_HISTORY, (tracking_id,))).fetchall())

        return await self._read(read)

    async def replies(self, tracking_id: str) -> list[StoredInbound]:
        """Return the inbound messages that answer a message, oldest first."""

        async def read(connection: psycopg.AsyncConnection[Any]) -> list[StoredInbound]:
            return _inbound(await (await connection.execute(_REPLIES, (tracking_id,))).fetchall())

        return await self._read(read)

    async def message(self, tracking_id: str) -> MessageState | None:
        """Return a message's latest events and replies with their totals, read together (see ``LogReader``)."""

        async def read(connection: psycopg.AsyncConnection[Any]) -> MessageState | None:
            key = (tracking_id,)
            rows = _events(await (await connection.execute(_ONE_MESSAGE[0], key)).fetchall())
            history, more_events = bounded(rows, MAX_EVENTS_PER_MESSAGE)
            if not history:
                return None
            rows_in = _inbound(await (await connection.execute(_ONE_MESSAGE[1], key)).fetchall())
            replies, more_replies = bounded(rows_in, MAX_REPLIES_PER_MESSAGE)
            events_total = await _count(connection, _ONE_MESSAGE[2], key) if more_events else len(history)
            replies_total = await _count(connection, _ONE_MESSAGE[3], key) if more_replies else len(replies)
            return MessageState(history[-1], history, replies, events_total, replies_total)

        return await self._read(read)

    async def events_after(self, after_sequence: int, event_filter: EventFilter, limit: int) -> Sequence[Entry]:
        """Return up to ``limit`` entries of the filter with a sequence greater than ``after_sequence``, in order."""
        where, params = _where(event_filter, "")
        table, columns, build = (
            ("inbound", INBOUND_COLUMNS, _inbound) if event_filter.inbound else ("events", EVENT_COLUMNS, _events)
        )

        async def read(connection: psycopg.AsyncConnection[Any]) -> Sequence[Entry]:
            cursor = await connection.execute(
                f"SELECT {columns} FROM {table} WHERE sequence > %s{where} ORDER BY sequence LIMIT %s",
                (after_sequence, *params, limit),
            )
            return build(await cursor.fetchall())

        return await self._read(read)

    async def snapshot_page(
        self, event_filter: EventFilter, as_of: int, after_tracking_id: str, limit: int
    ) -> list[StoredEvent]:
        """One page of a snapshot as of a sequence (see ``LogReader``)."""
        sql = snapshot_page_sql("%s", "JOIN", event_filter)
        params = snapshot_page_parameters(event_filter, as_of, after_tracking_id, limit)

        async def read(connection: psycopg.AsyncConnection[Any]) -> list[StoredEvent]:
            return _events(await (await connection.execute(sql, params)).fetchall())

        return await self._read(read)

    async def statuses(self, tracking_ids: Sequence[str], *, history: bool = False) -> dict[str, MessageState]:
        """Return the messages found among ``tracking_ids``, with their history and replies when asked."""
        ids = list(tracking_ids)

        async def read(connection: psycopg.AsyncConnection[Any]) -> dict[str, MessageState]:
            cursor = await connection.execute(
                f"SELECT {event_columns('e.')} FROM messages m JOIN events e ON e.sequence = m.current_sequence"
                " WHERE m.tracking_id = ANY(%s)",
                (ids,),
            )
            found = {event.tracking_id: MessageState(event, [], []) for event in _events(await cursor.fetchall())}
            if history and found:
                events = await connection.execute(latest_events_sql("tracking_id = ANY(%s)"), (list(found),))
                replies = await connection.execute(
                    latest_replies_sql("reference_tracking_id = ANY(%s)"), (list(found),)
                )
                with_latest(
                    found, _totalled_events(await events.fetchall()), _totalled_inbound(await replies.fetchall())
                )
            return found

        return await self._read(read)

    async def list_messages(
        self, campaign_tracking_id: str, statuses: frozenset[int], after_tracking_id: str, limit: int
    ) -> list[StoredEvent]:
        """Return the current-status events of up to ``limit`` messages of a campaign whose current status is one
        of ``statuses`` (all when empty), with a tracking id after ``after_tracking_id``, in tracking id order."""
        where, params = ("", ()) if not statuses else (" AND m.status = ANY(%s)", (sorted(statuses),))

        async def read(connection: psycopg.AsyncConnection[Any]) -> list[StoredEvent]:
            cursor = await connection.execute(
                f"SELECT {event_columns('e.')} FROM messages m JOIN events e ON e.sequence = m.current_sequence"
                f" WHERE m.campaign_tracking_id = %s{where} AND m.tracking_id > %s ORDER BY m.tracking_id LIMIT %s",
                (campaign_tracking_id, *params, after_tracking_id, limit),
            )
            return _events(await cursor.fetchall())

        return await self._read(read)

    async def campaign_summary(self, campaign_tracking_id: str) -> CampaignSummary | None:
        """Return the campaign's counts by current status and the sequence they are consistent with."""

        async def read(connection: psycopg.AsyncConnection[Any]) -> CampaignSummary | None:
            times = await connection.execute(
                "SELECT first_update_us, latest_update_us FROM campaigns WHERE campaign_tracking_id = %s",
                (campaign_tracking_id,),
            )
            counts = await connection.execute(
                "SELECT status, messages FROM campaign_counts WHERE campaign_tracking_id = %s AND messages > 0"
                " ORDER BY status",
                (campaign_tracking_id,),
            )
            head = await connection.execute("SELECT value FROM meta WHERE key = 'last_sequence'")
            row = await times.fetchone()
            if row is None:
                return None
            sequence = await head.fetchone()
            return CampaignSummary(
                {status: messages for status, messages in await counts.fetchall()},
                row[0],
                row[1],
                int(sequence[0]) if sequence else 0,
            )

        return await self._read(read)

    async def due_checks(self, changed_before_us: int, limit: int) -> list[DueCheck]:
        """Return up to ``limit`` messages due for reconciliation, those due longest first."""

        async def read(connection: psycopg.AsyncConnection[Any]) -> list[DueCheck]:
            cursor = await connection.execute(
                f"SELECT {event_columns('e.')}, m.checks"
                " FROM messages m JOIN events e ON e.sequence = m.current_sequence"
                " WHERE m.check_from_us IS NOT NULL AND m.check_from_us < %s ORDER BY m.check_from_us LIMIT %s",
                (changed_before_us, limit),
            )
            rows = await cursor.fetchall()
            return [DueCheck(event, row[-1]) for event, row in zip(_events(rows), rows, strict=True)]

        return await self._read(read)

    async def last_sequence(self) -> int:
        """Return the greatest sequence committed (0 when none)."""
        return await self._read(lambda connection: _ameta(connection, "last_sequence"))

    async def pruned_through(self) -> int:
        """Return the greatest sequence ever pruned (0 when none)."""
        return await self._read(lambda connection: _ameta(connection, "pruned_through"))

    async def quarantined(self, ids: Sequence[int] | None = None) -> list[Quarantined]:
        """Return the bodies in quarantine (these ids, or all), the longest-held first."""

        async def read(connection: psycopg.AsyncConnection[Any]) -> list[Quarantined]:
            where = " WHERE id = ANY(%s)" if ids is not None else ""
            cursor = await connection.execute(
                f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine{where} ORDER BY received_us, id",
                (list(ids),) if ids is not None else (),
            )
            return [_quarantined(row) for row in await cursor.fetchall()]

        return await self._read(read)

    async def quarantine_size(self) -> tuple[int, int]:
        """Return how many bodies the quarantine holds, and their bytes."""

        async def read(connection: psycopg.AsyncConnection[Any]) -> tuple[int, int]:
            row = await (await connection.execute("SELECT count(*) FROM quarantine")).fetchone()
            return (int(row[0]) if row else 0), await _ameta(connection, "quarantine_bytes")

        return await self._read(read)


def _quarantined(row: Any) -> Quarantined:
    return Quarantined(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], bytes(row[8]), row[9])


def _name(conninfo: str) -> str:
    """How logs and errors call the database: server and name, never the password."""
    parts = conninfo_to_dict(conninfo)
    return f"PostgreSQL {parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def _describe(error: psycopg.Error) -> str:
    """The first line of a driver error: it names the server, never the password."""
    return str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__


def _migrate(connection: psycopg.Connection[Any], migrations: Sequence[str] = _MIGRATIONS) -> None:
    """Bring the schema up to the last of ``migrations`` (tests pass fewer, to make an older database)."""
    connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
    version = int(row[0]) if row and row[0] is not None else 0
    for number, script in enumerate(migrations[version:], start=version + 1):
        with connection.transaction():
            connection.execute(script)
            connection.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
    if 0 < version < len(migrations):  # An existing database (a new one is just created).
        _LOGGER.info("schema upgraded", extra={"from_version": version, "to_version": len(migrations)})


async def _plan(
    connection: psycopg.AsyncConnection[Any],
    appends: Sequence[AppendStatus],
    messages: Sequence[Any],
    receive_us: int,
) -> tuple[StatusPlan, InboundPlan]:
    callbacks = [append.callback for append in appends]
    keys = [event_key(callback) for callback in callbacks]
    content_keys = [inbound_key(message) for message in messages]
    # The log's lock first: held until commit, so sequences become visible in commit order. The reads after it
    # run once it is held (each statement sees what committed before it started).
    head = await connection.execute("SELECT value FROM meta WHERE key = 'last_sequence' FOR UPDATE")
    stored = await connection.execute(
        # LATERAL: one lookup through the unique index per key, whatever the planner thinks of the table.
        "SELECT batch.tracking_id, batch.status_key, batch.update_us"
        " FROM unnest(%b::text[], %b::text[], %b::bigint[]) AS batch (tracking_id, status_key, update_us)"
        " CROSS JOIN LATERAL (SELECT 1 FROM events e WHERE e.tracking_id = batch.tracking_id"
        " AND e.status_key = batch.status_key AND e.update_us = batch.update_us) AS found",
        ([key[0] for key in keys], [key[1] for key in keys], [key[2] for key in keys]),
    )
    current_rows = await connection.execute(
        "SELECT tracking_id, campaign_tracking_id, status, update_us, rank, current_sequence FROM messages"
        " WHERE tracking_id = ANY(%b)",
        (tracking_ids(callbacks),),
    )
    inbound_rows = await connection.execute(
        "SELECT content_key FROM inbound WHERE content_key = ANY(%b)", (content_keys,)
    )
    row = await head.fetchone()  # The first fetch sends them all and waits once.
    existing = {(row[0], row[1], row[2]) for row in await stored.fetchall()}
    current = {row[0]: Current(row[1], row[2], row[3], row[4], row[5]) for row in await current_rows.fetchall()}
    existing_inbound = {row[0] for row in await inbound_rows.fetchall()}
    plan = plan_status(
        callbacks,
        keys,
        existing=existing,
        current=current,
        last_sequence=int(row[0]) if row else 0,
        receive_us=receive_us,
        sources=[append.source for append in appends],
    )
    inbound = plan_inbound(
        messages, content_keys, existing=existing_inbound, last_sequence=plan.last_sequence, receive_us=receive_us
    )
    return plan, inbound


async def _apply(
    connection: psycopg.AsyncConnection[Any], plan: StatusPlan, inbound: InboundPlan, receive_us: int
) -> None:
    # Binary parameters (%b): arrays of bytea sent as text would be hex, twice the size and parsed (measured 3x).
    if plan.events:
        events = [new.event for new in plan.events]
        await connection.execute(
            "INSERT INTO events (sequence, tracking_id, campaign_tracking_id, status_key, status, status_name, rank,"
            " update_us, receive_us, was_current, callback, previous_status, source)"
            " SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[], %b::smallint[], %b::text[],"
            " %b::smallint[], %b::bigint[], %b::bigint[], %b::boolean[], %b::bytea[], %b::smallint[], %b::smallint[])",
            (
                [event.sequence for event in events],
                [event.tracking_id for event in events],
                [event.campaign_tracking_id for event in events],
                [new.status_key for new in plan.events],
                [event.status for event in events],
                [event.status_name for event in events],
                [new.rank for new in plan.events],
                [event.update_us for event in events],
                [event.receive_us for event in events],
                [event.is_current for event in events],
                [event.callback for event in events],
                [event.previous_status for event in events],
                [event.source for event in events],
            ),
        )
        messages = list(plan.messages.items())
        await connection.execute(
            "INSERT INTO messages (tracking_id, campaign_tracking_id, current_sequence, update_us, rank, status,"
            " check_from_us) SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::smallint[],"
            " %b::smallint[], %b::bigint[])"
            " ON CONFLICT (tracking_id) DO UPDATE SET campaign_tracking_id = excluded.campaign_tracking_id,"
            " current_sequence = excluded.current_sequence, update_us = excluded.update_us, rank = excluded.rank,"
            " status = excluded.status, check_from_us = excluded.check_from_us, checks = 0",
            (
                [tracking_id for tracking_id, _ in messages],
                [now.campaign_tracking_id for _, now in messages],
                [now.sequence for _, now in messages],
                [now.update_us for _, now in messages],
                [now.rank for _, now in messages],
                [now.status for _, now in messages],
                [check_from(now.status, receive_us) for _, now in messages],
            ),
        )
        await _add_counts(connection, plan.counts)
        times = list(plan.campaign_times.items())
        await connection.execute(
            "INSERT INTO campaigns (campaign_tracking_id, first_update_us, latest_update_us)"
            " SELECT * FROM unnest(%b::text[], %b::bigint[], %b::bigint[])"
            " ON CONFLICT (campaign_tracking_id) DO UPDATE SET"
            " first_update_us = LEAST(campaigns.first_update_us, excluded.first_update_us),"
            " latest_update_us = GREATEST(campaigns.latest_update_us, excluded.latest_update_us)",
            (
                [campaign for campaign, _ in times],
                [first for _, (first, _) in times],
                [latest for _, (_, latest) in times],
            ),
        )
    if inbound.entries:
        entries = [new.entry for new in inbound.entries]
        await connection.execute(
            "INSERT INTO inbound (sequence, content_key, campaign_tracking_id, reference_tracking_id, receive_us,"
            " message) SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[], %b::bigint[],"
            " %b::bytea[])",
            (
                [entry.sequence for entry in entries],
                [new.key for new in inbound.entries],
                [entry.campaign_tracking_id for entry in entries],
                [entry.reference_tracking_id for entry in entries],
                [entry.receive_us for entry in entries],
                [entry.message for entry in entries],
            ),
        )
    if plan.events or inbound.entries:
        await _set_meta(connection, "last_sequence", inbound.last_sequence)
        await connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(inbound.last_sequence)))


def _where(event_filter: EventFilter, prefix: str) -> tuple[str, tuple[object, ...]]:
    clauses = ""
    params: tuple[object, ...] = ()
    if event_filter.campaign_tracking_id is not None:
        clauses += f" AND {prefix}campaign_tracking_id = %s"
        params += (event_filter.campaign_tracking_id,)
    if event_filter.statuses:
        clauses += f" AND {prefix}status = ANY(%s)"
        params += (sorted(event_filter.statuses),)
    return clauses, params


def _events(rows: Any) -> list[StoredEvent]:
    return [
        StoredEvent(
            row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), bytes(row[8]), row[9], row[10]
        )
        for row in rows
    ]


async def _add_counts(connection: psycopg.AsyncConnection[Any], counts: Mapping[tuple[str, int], int]) -> None:
    if counts:
        keys = sorted(counts)  # One order for every writer: two instances' upserts cannot deadlock.
        await connection.execute(
            "INSERT INTO campaign_counts (campaign_tracking_id, status, messages)"
            " SELECT * FROM unnest(%b::text[], %b::smallint[], %b::bigint[])"
            " ON CONFLICT (campaign_tracking_id, status) DO UPDATE SET"
            " messages = campaign_counts.messages + excluded.messages",
            ([campaign for campaign, _ in keys], [status for _, status in keys], [counts[key] for key in keys]),
        )


def _inbound(rows: Any) -> list[StoredInbound]:
    return [StoredInbound(row[0], row[1], row[2], row[3], bytes(row[4])) for row in rows]


async def _count(connection: psycopg.AsyncConnection[Any], sql: str, params: tuple[str, ...]) -> int:
    row = await (await connection.execute(sql, params)).fetchone()
    return int(row[0]) if row else 0


def _totalled_events(rows: Any) -> list[tuple[StoredEvent, int]]:
    return list(zip(_events(rows), (row[11] for row in rows), strict=True))


def _totalled_inbound(rows: Any) -> list[tuple[StoredInbound, int]]:
    return list(zip(_inbound(rows), (row[5] for row in rows), strict=True))


async def _ameta(connection: psycopg.AsyncConnection[Any], key: str) -> int:
    cursor = await connection.execute("SELECT value FROM meta WHERE key = %s", (key,))
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _set_meta(connection: psycopg.AsyncConnection[Any], key: str, value: int) -> None:
    await connection.execute(
        "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


async def _quarantine(connection: psycopg.AsyncConnection[Any], job: Quarantine, now_us: int) -> int:
    """Keep a refused body, or count another attempt of one kept; then keep the whole within its bound."""
    digest = body_digest(job.body)
    row = await (
        await connection.execute(
            "UPDATE quarantine SET attempts = attempts + 1, last_us = %s, peer = %s, status = %s, reason = %s,"
            " detail = %s WHERE body_hash = %s RETURNING id",
            (now_us, job.peer, job.status, job.reason, job.detail, digest),
        )
    ).fetchone()
    if row is not None:
        return int(row[0])
    inserted = await (
        await connection.execute(
            "INSERT INTO quarantine (body_hash, received_us, last_us, peer, status, reason, detail, attempts, size,"
            " body, kind) VALUES (%s, %s, %s, %s, %s, %s, %s, 1, %s, %b, %s) RETURNING id",
            (digest, now_us, now_us, job.peer, job.status, job.reason, job.detail, cost := quarantine_cost(job),
             job.body, job.kind),
        )
    ).fetchone()  # fmt: skip
    assert inserted is not None
    total = await _ameta(connection, "quarantine_bytes") + cost
    surplus = await _count(connection, "SELECT COUNT(*) FROM quarantine", ()) - job.max_entries
    if total > job.max_bytes or surplus > 0:
        oldest = await (
            await connection.execute("SELECT id, size FROM quarantine ORDER BY last_us, id LIMIT 1000")
        ).fetchall()
        doomed = oldest_beyond([(row[0], row[1]) for row in oldest], total - job.max_bytes, surplus)
        await connection.execute("DELETE FROM quarantine WHERE id = ANY(%s)", (doomed,))
        total -= sum(size for id_, size in oldest if id_ in doomed)
    await _set_meta(connection, "quarantine_bytes", total)
    return int(inserted[0])


async def _drop_quarantined(connection: psycopg.AsyncConnection[Any], job: DropQuarantined) -> int:
    where, params = "", ()  # type: tuple[str, tuple[Any, ...]]
    if job.ids is not None:
        where, params = " WHERE id = ANY(%s)", (list(job.ids),)
    elif job.seen_before_us is not None:
        where, params = " WHERE last_us < %s", (job.seen_before_us,)
    freed = await (await connection.execute(f"DELETE FROM quarantine{where} RETURNING size", params)).fetchall()
    if freed:
        await connection.execute(
            "UPDATE meta SET value = GREATEST(0, value - %s) WHERE key = 'quarantine_bytes'",
            (sum(row[0] for row in freed),),
        )
    return len(freed)


async def _prune_chunk(connection: psycopg.AsyncConnection[Any], cutoff_us: int, chunk: int) -> int:
    """Delete up to ``chunk`` of the oldest entries of each kind received before the cutoff; one instance at a
    time."""
    row = await (await connection.execute("SELECT pg_try_advisory_xact_lock(%s)", (_PRUNE_LOCK,))).fetchone()
    if not row or not row[0]:
        return 0  # Another instance is pruning now.
    deleted = await (
        await connection.execute(
            "DELETE FROM events WHERE sequence IN"
            " (SELECT sequence FROM events WHERE receive_us < %s ORDER BY sequence LIMIT %s)"
            " RETURNING sequence, tracking_id",
            (cutoff_us, chunk),
        )
    ).fetchall()
    replies = await (
        await connection.execute(
            "DELETE FROM inbound WHERE sequence IN"
            " (SELECT sequence FROM inbound WHERE receive_us < %s ORDER BY sequence LIMIT %s) RETURNING sequence",
            (cutoff_us, chunk),
        )
    ).fetchall()
    if not deleted and not replies:
        return 0
    await connection.execute(
        "INSERT INTO meta (key, value) VALUES ('pruned_through', %s)"
        " ON CONFLICT (key) DO UPDATE SET value = GREATEST(meta.value, excluded.value)",
        (max(row[0] for row in [*deleted, *replies]),),
    )
    # A message whose current event was pruned takes its best remaining event as current, or is forgotten.
    counts: dict[tuple[str, int], int] = {}
    orphaned = await (
        await connection.execute(
            "DELETE FROM messages m WHERE m.tracking_id = ANY(%s)"
            " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.sequence = m.current_sequence)"
            " RETURNING tracking_id, campaign_tracking_id, status",
            (sorted({tracking_id for _, tracking_id in deleted}),),
        )
    ).fetchall()
    for _, campaign, status in orphaned:
        counts[(campaign, status)] = counts.get((campaign, status), 0) - 1
    if orphaned:
        for campaign, status in await (
            await connection.execute(
                "INSERT INTO messages (tracking_id, campaign_tracking_id, current_sequence, update_us, rank, status)"
                " SELECT DISTINCT ON (tracking_id) tracking_id, campaign_tracking_id, sequence, update_us, rank, status"
                f" FROM events WHERE tracking_id = ANY(%s) ORDER BY tracking_id, {order_by(descending=True)}"
                " RETURNING campaign_tracking_id, status",
                ([row[0] for row in orphaned],),
            )
        ).fetchall():
            counts[(campaign, status)] = counts.get((campaign, status), 0) + 1
    await _add_counts(connection, {key: delta for key, delta in counts.items() if delta})
    return len(deleted) + len(replies)
