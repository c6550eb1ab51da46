"""The store fails for real under the running service: another process holds the write lock, the filesystem fills
up. Callbacks get 503 (never 200), nothing is half-stored, /readyz says why, and it recovers without a restart."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from conftest import StartService
from support.fixtures import fixture
from support.network import http_request, post_callback
from support.polling import eventually
from support.service_process import OPEN, WITHOUT_FILE_PRIVILEGES, ServiceProcess

pytestmark = pytest.mark.e2e


def callback(tracking_id: str) -> bytes:
    return json.dumps({**fixture("02-m1-delivered.json"), "trackingId": tracking_id}).encode()


def assert_unavailable(service: ServiceProcess, tracking_id: str) -> None:
    """The callback gets 503 with a problem body, /readyz is not ready because of the store, nothing is stored."""
    answer = post_callback(service.http_port, callback(tracking_id))
    assert answer.status == 503, answer.body
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["reason"] == "store_unavailable"
    assert answer.headers["retry-after"]
    ready = http_request(service.http_port, "GET", "/readyz")
    assert ready.status == 503
    assert ready.json()["checks"]["store"]["ready"] is False
    with pytest.raises(grpc.RpcError) as raised:
        service.get_status(tracking_id)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def assert_recovered(service: ServiceProcess, tracking_id: str) -> None:
    """The same callback is now accepted (not a duplicate: nothing of it was kept before) and /readyz is ready."""
    answer = post_callback(service.http_port, callback(tracking_id))
    assert (answer.status, answer.json()["status"]) == (200, "accepted")
    assert http_request(service.http_port, "GET", "/readyz").status == 200
    assert [event.status_name for event in service.get_status(tracking_id).events] == ["Delivered"]


def test_write_lock_held_by_another_process(start_service: StartService, tmp_path: Path) -> None:
    database = tmp_path / "locked.db"
    service = start_service(*OPEN, database=database)
    assert post_callback(service.http_port, callback("before-lock")).status == 200

    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # Another process's write transaction, held open.
    try:
        assert_unavailable(service, "during-lock")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert_recovered(service, "during-lock")


@contextlib.contextmanager
def tiny_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path``; skips the test where this machine does not allow mounting."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no space left."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 4096)
    return filler


def test_full_filesystem(start_service: StartService, tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "tiny", "2m") as tiny:
        service = start_service(*OPEN, database=tiny / "full.db")
        assert post_callback(service.http_port, callback("before-full")).status == 200
        filler = fill(tiny)
        # Space the database already holds may absorb a few writes; the first one that needs more must fail.
        statuses = []
        for number in range(500):
            answer = post_callback(service.http_port, callback(f"filling-{number}"))
            statuses.append(answer.status)
            if answer.status != 200:
                break
        assert statuses[-1] == 503, statuses
        assert_unavailable(service, "during-full")

        filler.unlink()
        assert_recovered(service, "during-full")
        service.stop()
        with sqlite3.connect(tiny / "full.db") as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def eventually_accepted(service: ServiceProcess, tracking_id: str, timeout: float = 10.0) -> None:
    """After the condition is undone, callbacks are kept again (within a few tries), without a restart."""

    def accepted() -> bool:
        answer = post_callback(service.http_port, callback(tracking_id))
        assert answer.status in (200, 503), answer.body
        return answer.status == 200

    eventually(accepted, "did not recover", timeout, interval=0.2)
    assert http_request(service.http_port, "GET", "/readyz").status == 200
    assert service.get_status(tracking_id).status_name == "Delivered"


def assert_read_only(service: ServiceProcess, tracking_id: str, what: str) -> None:
    """503 within Routee's deadline, never 200; /readyz says the database is read-only; nothing is stored."""
    started = time.monotonic()
    answer = post_callback(service.http_port, callback(tracking_id))
    assert answer.status == 503, answer.body
    assert time.monotonic() - started < 2.0
    ready = http_request(service.http_port, "GET", "/readyz")
    assert ready.status == 503
    assert what in ready.json()["checks"]["store"]["error"]
    with pytest.raises(grpc.RpcError):
        service.get_status(tracking_id)


def test_read_only_storage_as_an_unprivileged_process(start_service: StartService, tmp_path: Path) -> None:
    """Run without root's power over file modes: a database file made read-only at run time, its directory made
    read-only, and a file read-only at start each give 503 and a /readyz reason; fixing the permission recovers
    without a restart."""
    directory = tmp_path / "data"
    directory.mkdir()
    database = directory / "routee.db"
    service = start_service(*OPEN, database=database, wrapper=WITHOUT_FILE_PRIVILEGES)
    assert post_callback(service.http_port, callback("before")).status == 200

    database.chmod(0o444)
    assert_read_only(service, "file-read-only", "read-only")
    database.chmod(0o644)
    eventually_accepted(service, "file-writable-again")

    directory.chmod(0o555)
    try:
        assert_read_only(service, "directory-read-only", "read-only")
    finally:
        directory.chmod(0o755)
    eventually_accepted(service, "directory-writable-again")

    service.stop()
    for path in directory.iterdir():
        path.chmod(0o444)
    restarted = start_service(*OPEN, database=database, wrapper=WITHOUT_FILE_PRIVILEGES, ready_path="/healthz")
    assert_read_only(restarted, "read-only-at-start", "read")
    for path in directory.iterdir():
        path.chmod(0o644)
    eventually_accepted(restarted, "writable-after-start")
