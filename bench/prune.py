"""Retention under load: ingest latency while the writer prunes many old rows, against the same service after.

A SQLite database is filled with old messages (one status event each, received long before the retention),
the service starts on it, and wrk posts callbacks while the writer deletes them, a chunk per transaction;
then again once nothing old is left.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.harness import FIXTURE, service, wrk_service
from routee.callbacks.v1 import callback_pb2 as pb
from service.routee.callbacks import parse_callback
from service.store import AppendStatus, open_store

#: Received this long ago: past any retention the service is started with.
_OLD_US = 30 * 86_400 * 1_000_000


async def _fill(database: str, rows: int) -> None:
    template = parse_callback(FIXTURE).callback
    store = open_store(database, synchronous="OFF")
    store.open()
    received = time.time_ns() // 1000 - _OLD_US
    try:
        for start in range(0, rows, 2000):
            jobs = []
            for number in range(start, min(rows, start + 2000)):
                callback = pb.ViberCallback()
                callback.CopyFrom(template)
                callback.tracking_id = f"old-{number}"
                jobs.append(AppendStatus(callback))
            await store.write(jobs, received)
        # One message of today: retention counts back from the newest entry, so the old ones are due at once.
        fresh = pb.ViberCallback()
        fresh.CopyFrom(template)
        fresh.tracking_id = "fresh"
        await store.write([AppendStatus(fresh)], time.time_ns() // 1000)
    finally:
        await store.close()


def _old_left(database: Path) -> int:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        cutoff = time.time_ns() // 1000 - _OLD_US // 2
        return int(connection.execute("SELECT count(*) FROM events WHERE receive_us < ?", (cutoff,)).fetchone()[0])


def bench_prune(workdir: Path, rows: int, seconds: float) -> dict[str, Any]:
    """wrk while the service prunes ``rows`` old events, then wrk once it is done."""
    database = workdir / "prune.db"
    started = time.monotonic()
    asyncio.run(_fill(str(database), rows))
    result: dict[str, Any] = {"rows": rows, "fill_seconds": round(time.monotonic() - started, 1)}
    with service(workdir, "--retention-hours", "48", database=str(database)) as target:
        wrk_service(target, 3)  # Warm: the first writes after a start read cold pages, pruning or not.
        before = _old_left(database)
        result["while_pruning"] = wrk_service(target, seconds)
        result["old_left_after_the_first_run"] = _old_left(database)
        result["pruned_during_the_first_run"] = before - result["old_left_after_the_first_run"]
        deadline = time.monotonic() + 600
        while _old_left(database) and time.monotonic() < deadline:
            time.sleep(1)
        result["pruned_within_seconds"] = round(time.monotonic() - started - result["fill_seconds"], 1)
        result["old_left"] = _old_left(database)
        result["after"] = wrk_service(target, seconds)
    return result
