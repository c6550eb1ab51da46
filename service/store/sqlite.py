"""The embedded engine: one SQLite file in WAL mode.

Writes run in ``BEGIN IMMEDIATE`` transactions, so one writer at a time holds
the database; sequences are taken from the ``last_sequence`` row inside that
transaction, which keeps them in commit order across processes. Reads run on
their own connections (WAL lets them proceed while a write is under way).
The algorithm is ``service.store.base``'s; this module holds what only SQLite does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from service.domain.errors import StartupError, StoreUnavailableError
from service.store import WriteResult, sql
from service.store.base import SqlStore, Work
from service.store.schema import MIGRATIONS, SQLITE_TYPES, pending, statements
from service.store.sql import Dialect, Insert, Session

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

SQLITE = Dialect(lock_head="", types=SQLITE_TYPES, arrays=False)

#: Reader threads, each with its connection: a long read (a campaign's snapshot) leaves others to the rest.
READER_THREADS = 4


class SqliteStore(SqlStore):
    """A SQLite database file as the log; see ``service.store`` for the contract."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 1000,
        poll_interval: float = 0.05,
        secure_delete: bool = False,
    ) -> None:
        self._path = path
        self._secure_delete = secure_delete
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
                migrate(connection)
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

    async def purge(self) -> None:
        """Copy every page the log holds into the file and empty the log (``wal_checkpoint(TRUNCATE)``), retrying
        while readers hold older pages (the running service's, for a moment); StoreUnavailableError when they
        never let go."""
        connection = self._writer_connection()
        for _ in range(50):
            busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            await asyncio.sleep(0.1)
        raise StoreUnavailableError(f"SQLite database {self._path}: its log could not be emptied (readers stay)")

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
        if self._secure_delete:  # What this connection frees is zeroed, in the log and in the file.
            connection.execute("PRAGMA secure_delete = ON")
        return connection

    def _writer_connection(self) -> sqlite3.Connection:
        if self._writer is None:
            self._writer = self._connect()
        return self._writer

    # -- transactions -------------------------------------------------------------------

    def _unavailable(self, error: sqlite3.Error, doing: str) -> Exception:
        """The one place SQLite's errors become the service's: what the database cannot do now (locked,
        read-only, full, failing, not a database) is StoreUnavailableError; a statement's own fault stays."""
        if isinstance(error, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)):
            return error
        return StoreUnavailableError(f"SQLite database {self._path} cannot be {doing}: {error}")

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Session]:
        """A ``BEGIN IMMEDIATE`` transaction on the caller's thread: a local transaction takes less than a
        millisecond, and a hand-off to a thread and back costs more than it would save (measured)."""
        try:
            self._check_writable()
            connection = self._writer_connection()
            connection.execute("BEGIN IMMEDIATE")
            yield _Session(connection)
            connection.execute("COMMIT")
        except sqlite3.Error as ex:
            self._drop_writer()  # Start over on a fresh connection next time (closing it rolls back).
            raise self._unavailable(ex, "written") from None
        except BaseException:
            self._drop_writer()
            raise

    def _committed(self, result: WriteResult) -> None:
        if result.entries:  # In sequence order: the last is the head now.
            self._own_head = result.entries[-1].sequence

    def _check_writable(self) -> None:
        """Refuse to write when the file or its directory was made read-only.

        The open connection's descriptor would still write (permissions are checked at open only), but whoever
        made the database read-only meant it; the next write after they undo it opens a new connection.
        """
        for what, path in self._must_be_writable:  # One access() each while all is well (this runs per batch).
            if not os.access(path, os.W_OK) and os.path.exists(path):
                raise sqlite3.OperationalError(f"the database {what} {path} is read-only")

    async def wait_for_commits(self, within: float) -> bool:
        """Poll until another connection commits entries (True), or time is up (False).

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
                return False
            changed = self._data_version is not None and version != self._data_version
            self._data_version = version
            if changed and (self._own_head is None or head > self._own_head):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(self._poll_interval, remaining))

    async def _read(self, work: Work[_T], *, inline: bool = False) -> _T:
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
            try:
                connection.execute("BEGIN")  # One consistent snapshot for everything `work` reads.
                try:
                    return _complete(work(_Session(connection)))
                finally:
                    connection.execute("COMMIT")
            except sqlite3.Error as ex:
                raise self._unavailable(ex, "read") from None

        if inline:
            return run()
        return await asyncio.get_running_loop().run_in_executor(self._readers, run)


class _Rows:
    """A statement's answer, read whole."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    async def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    async def fetchall(self) -> list[Any]:
        return self._rows


class _Session:
    """A transaction on one SQLite connection; nothing in it waits, so its coroutines never suspend."""

    __slots__ = ("_connection",)
    dialect = SQLITE

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    async def execute(self, sql: str, params: Sequence[object] = ()) -> _Rows:
        cursor = self._connection.execute(_spelled(sql), params)
        return _Rows(cursor.fetchall(), cursor.rowcount)

    async def rows(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        return self._connection.execute(_spelled(sql), params).fetchall()

    async def insert(self, insert: Insert, rows: Sequence[Sequence[object]]) -> None:
        if rows:
            self._connection.executemany(_insert_sql(insert), rows)


@functools.lru_cache(maxsize=512)
def _spelled(sql: str) -> str:
    """A statement written for the store (``%s``) in SQLite's placeholders (``?``)."""
    return sql.replace("%s", "?")


@functools.lru_cache(maxsize=64)
def _insert_sql(insert: Insert) -> str:
    return f"INSERT INTO {insert.table} ({insert.names}) VALUES ({', '.join('?' * len(insert.columns))}){insert.tail}"


def _complete(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine over a ``_Session`` to its end on this thread (a reader thread has no event loop, and
    the session's coroutines never suspend)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("a read of SQLite suspended")


async def _version_and_head(session: Session) -> tuple[int, int]:
    (version,) = await session.rows("PRAGMA data_version")
    return int(version[0]), await sql.meta(session, "last_sequence")


def migrate(connection: sqlite3.Connection, migrations: Sequence[str] = MIGRATIONS) -> None:
    """Bring the schema up to the last of ``migrations`` (tests pass fewer, to make an older database); its version
    is ``PRAGMA user_version``."""
    if connection.execute("PRAGMA user_version").fetchone()[0] >= len(migrations):
        return
    connection.execute("BEGIN IMMEDIATE")  # Several processes may start at once: one upgrades, the rest wait.
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        for number, script in pending(version, migrations):
            for statement in statements(script, SQLITE):
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {number}")
        connection.execute("COMMIT")
        if 0 < version < len(migrations):  # An existing database (a new one is just created).
            _LOGGER.info("schema upgraded", extra={"from_version": version, "to_version": len(migrations)})
    except BaseException:
        connection.execute("ROLLBACK")
        raise
