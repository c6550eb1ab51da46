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

The algorithm is ``service.store.base``'s; this module holds what only PostgreSQL does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from service.domain.errors import StartupError, StoreUnavailableError
from service.store.base import SqlStore, Work
from service.store.schema import MIGRATIONS, POSTGRES_LEGACY_OFFSET, POSTGRES_TYPES, pending, statements
from service.store.sql import Dialect, Insert, Session

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

POSTGRES = Dialect(
    lock_head=" FOR UPDATE",
    types=POSTGRES_TYPES,
    arrays=True,
    prune_lock=f"SELECT pg_try_advisory_xact_lock({_PRUNE_LOCK})",
)


class PostgresStore(SqlStore):
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
                    migrate(connection)
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

    async def purge(self) -> None:
        """Rewrite the tables that hold personal data (``VACUUM FULL``), so that no file of theirs keeps an old row
        version; it holds each table's lock while it copies it (writes wait, or answer 503 after
        ``lock_timeout``). The server's WAL and backups keep the old versions until they age out."""
        with self._mapped("purged"):
            async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, **_CONNECTION) as conn:
                for table in ("events", "inbound", "quarantine"):
                    await conn.execute(psycopg.sql.SQL("VACUUM FULL {}").format(psycopg.sql.Identifier(table)))

    async def _writer_connection(self) -> psycopg.AsyncConnection[Any]:
        if self._writer is None or self._writer.closed:
            self._writer = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, options=_WRITER_OPTIONS, **_CONNECTION
            )
        return self._writer

    # -- transactions -------------------------------------------------------------------

    @contextlib.contextmanager
    def _mapped(self, doing: str) -> Iterator[None]:
        """The one place the driver's errors become the service's: a server that cannot be reached or is
        restarting, a lock or statement timeout, a full pool, is StoreUnavailableError."""
        try:
            yield
        except PoolTimeout:
            raise StoreUnavailableError(f"{self._name} cannot be {doing}: no connection") from None
        except psycopg.OperationalError as ex:
            raise StoreUnavailableError(f"{self._name} cannot be {doing}: {_describe(ex)}") from None

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Session]:
        """A transaction in pipeline mode: statements go out without waiting for each answer, so a batch costs
        two round trips (the lock with the reads the plan needs, then the writes with the commit) while it holds
        the log's lock. The event loop goes on while the server works: what arrives meanwhile makes up the next
        batch."""
        try:
            with self._mapped("written"):
                connection = await self._writer_connection()
                async with connection.pipeline(), connection.transaction():
                    yield _Session(connection)
        except BaseException:
            await self.close_writer()
            raise

    async def _appended(self, session: Session, head: int) -> None:
        await session.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(head)))

    async def wait_for_commits(self, within: float) -> bool:
        """Wait for another process's NOTIFY (True), or ``within`` seconds (False); while the server is away, just
        wait."""
        try:
            listener = await self._listening()
            own = self._writer.info.backend_pid if self._writer is not None and not self._writer.closed else None
            async for notification in listener.notifies(timeout=within):
                if notification.pid != own:
                    return True
        except psycopg.Error:
            if self._listener is not None:
                with contextlib.suppress(psycopg.Error):
                    await self._listener.close()
                self._listener = None
            await asyncio.sleep(within)
        return False

    async def _listening(self) -> psycopg.AsyncConnection[Any]:
        if self._listener is None or self._listener.closed:
            self._listener = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, **_CONNECTION)
            await self._listener.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(CHANNEL)))
        return self._listener

    async def _read(self, work: Work[_T], *, inline: bool = False) -> _T:
        """Run ``work`` in one REPEATABLE READ transaction (one snapshot for everything it reads)."""
        pool = await self._reading_pool()
        with self._mapped("read"):
            for attempt in (1, 2):
                try:
                    async with pool.connection() as connection, connection.transaction():
                        await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                        return await work(_Session(connection))
                except PoolTimeout:
                    raise
                except psycopg.OperationalError:
                    if attempt == 2:
                        raise
                    # A connection the server dropped (a restart) fails once and is discarded; its idle siblings
                    # are as dead: check them all now, so that the retry, and every read after it, gets a live one.
                    await pool.check()
        raise AssertionError("unreachable")

    async def _reading_pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
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
        return self._pool


class _Session:
    """A transaction on one PostgreSQL connection; psycopg's cursors answer as the store's sessions do."""

    __slots__ = ("_connection",)
    dialect = POSTGRES

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self._connection = connection

    async def execute(self, sql: str, params: Sequence[object] = ()) -> psycopg.AsyncCursor[Any]:
        return await self._connection.execute(sql, params)

    async def rows(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        return await (await self._connection.execute(sql, params)).fetchall()

    async def insert(self, insert: Insert, rows: Sequence[Sequence[object]]) -> None:
        if rows:
            await self._connection.execute(_insert_sql(insert), [list(column) for column in zip(*rows, strict=True)])


@functools.lru_cache(maxsize=64)
def _insert_sql(insert: Insert) -> str:
    """Rows in bulk as one statement of arrays, in binary (%b): arrays of bytea sent as text would be hex, twice
    the size and parsed (measured 3x)."""
    arrays = ", ".join(f"%b::{POSTGRES_TYPES[kind]}[]" for _, kind in insert.columns)
    return f"INSERT INTO {insert.table} ({insert.names}) SELECT * FROM unnest({arrays}){insert.tail}"


def _name(conninfo: str) -> str:
    """How logs and errors call the database: server and name, never the password."""
    parts = conninfo_to_dict(conninfo)
    return f"PostgreSQL {parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def _describe(error: psycopg.Error) -> str:
    """The first line of a driver error: it names the server, never the password."""
    return str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__


def migrate(connection: psycopg.Connection[Any], migrations: Sequence[str] = MIGRATIONS) -> None:
    """Bring the schema up to the last of ``migrations`` (tests pass fewer, to make an older database); each
    version made is a row of ``schema_migrations``."""
    connection.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER NOT NULL)")
    version = _version(connection)
    for number, script in pending(version, migrations):
        with connection.transaction():
            for statement in statements(script, POSTGRES):
                connection.execute(statement)
            connection.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (number,))
    if 0 < version < len(migrations):  # An existing database (a new one is just created).
        _LOGGER.info("schema upgraded", extra={"from_version": version, "to_version": len(migrations)})


def _version(connection: psycopg.Connection[Any]) -> int:
    row = connection.execute("SELECT max(version) FROM schema_migrations").fetchone()
    if row and row[0] is not None:
        return int(row[0])
    legacy = connection.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if legacy and legacy[0]:
        row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
        if row and row[0]:
            return int(row[0]) + POSTGRES_LEGACY_OFFSET
    return 0
