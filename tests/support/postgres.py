"""A real PostgreSQL server for the tests: Debian's binaries, a throwaway cluster in a temporary directory.

PostgreSQL refuses to run as root, so under root the cluster belongs to the ``postgres`` user. The server
listens on 127.0.0.1 on a free port; every test that asks gets a database of its own.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg


def _bindir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not candidates:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql); .ci/run installs it")
    return candidates[-1]


class PostgresServer:
    """A running throwaway cluster."""

    def __init__(self, directory: Path, port: int, process: subprocess.Popen[bytes], as_user: tuple[str, ...]) -> None:
        self.directory = directory
        self.port = port
        self.process = process
        self._as_user = as_user
        self._numbers = itertools.count(1)

    @property
    def admin_uri(self) -> str:
        """A superuser URI to the maintenance database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def uri(self, database: str, *, user: str = "postgres", password: str | None = None) -> str:
        """The URI of one database."""
        credentials = f"{user}:{password}" if password else user
        return f"postgresql://{credentials}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; returns its URI."""
        name = f"test_{os.getpid()}_{next(self._numbers)}"
        with psycopg.connect(self.admin_uri, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def execute(self, statement: str, database: str = "postgres") -> None:
        """Run one statement as the superuser."""
        with psycopg.connect(self.uri(database), autocommit=True) as connection:
            connection.execute(statement)  # type: ignore[call-overload]

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (it keeps its data; ``start`` brings it back on the same port)."""
        self._ctl("stop", "-m", mode, "-w")
        self.process.wait(30)

    def start(self) -> None:
        """Start the server again after ``stop``."""
        self.process = _launch(self.directory, self.port, self._as_user)
        _wait_ready(self.port, self.directory)

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self._as_user, str(_bindir() / "pg_ctl"), "-D", str(self.directory / "data"), *args],
            check=True,
            capture_output=True,
        )


def _launch(directory: Path, port: int, as_user: tuple[str, ...]) -> subprocess.Popen[bytes]:
    with (directory / "server.log").open("ab") as log:  # The server keeps its own copy of the descriptor.
        return subprocess.Popen(
            [
                *as_user,
                str(_bindir() / "postgres"),
                "-D", str(directory / "data"),
                "-p", str(port),
                "-k", str(directory),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "max_connections=300",
                "-c", "shared_buffers=64MB",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _wait_ready(port: int, directory: Path, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=1):
                return
        except psycopg.OperationalError as ex:
            if time.monotonic() > end:
                log = (directory / "server.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"PostgreSQL on port {port} did not start: {ex}\n{log}") from None
            time.sleep(0.1)


@contextlib.contextmanager
def postgres_server(port: int) -> Iterator[PostgresServer]:
    """Initialise and start a cluster on ``port``; stop it and delete it at the end."""
    # Switched by a command rather than subprocess's user=: that makes Python fork instead of vfork, and a fork of
    # a test process with live gRPC channels can crash in gRPC's fork handlers.
    as_user = ("setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups") if os.geteuid() == 0 else ()
    directory = Path(tempfile.mkdtemp(prefix="routee-pg-"))
    if as_user:
        shutil.chown(directory, "postgres")
    initdb = [str(_bindir() / "initdb"), "-D", str(directory / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
    subprocess.run([*as_user, *initdb], check=True, capture_output=True)
    server = PostgresServer(directory, port, _launch(directory, port, as_user), as_user)
    try:
        _wait_ready(port, directory)
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)
