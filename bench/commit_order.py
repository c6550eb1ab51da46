"""What commit order costs on PostgreSQL (issue 10): concurrent batch writers that take their sequences under the
log's lock — a counter row locked until commit, as ``service.store.postgres`` does — against writers that take them
from a plain ``SEQUENCE``; a tailer follows each run the way a resumed stream would and counts the events it
skipped (committed below a sequence it had already passed). Same tables, same batches, alternating rounds."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg

from bench.harness import spread

_SETUP = (
    "DROP TABLE IF EXISTS order_log, order_meta; DROP SEQUENCE IF EXISTS order_seq;"
    " CREATE TABLE order_log (sequence BIGINT PRIMARY KEY, tracking_id TEXT NOT NULL, body BYTEA NOT NULL);"
    " CREATE TABLE order_meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);"
    " INSERT INTO order_meta VALUES ('last_sequence', 0); CREATE SEQUENCE order_seq;"
)
_BODY = os.urandom(600)  # About a callback's raw JSON.


def _write(conninfo: str, ordered: bool, batch: int, until: float, written: list[int]) -> None:
    count = 0
    with psycopg.connect(conninfo, autocommit=True) as connection:
        while time.monotonic() < until:
            with connection.transaction(), connection.cursor() as cursor:
                ids = [f"m-{threading.get_ident()}-{count + n}" for n in range(batch)]
                if ordered:
                    row = cursor.execute(
                        "SELECT value FROM order_meta WHERE key = 'last_sequence' FOR UPDATE"
                    ).fetchone()
                    first = int(row[0]) + 1 if row else 1
                    cursor.executemany(
                        "INSERT INTO order_log (sequence, tracking_id, body) VALUES (%s, %s, %s)",
                        [(first + n, tracking_id, _BODY) for n, tracking_id in enumerate(ids)],
                    )
                    cursor.execute("UPDATE order_meta SET value = %s WHERE key = 'last_sequence'", (first + batch - 1,))
                else:
                    cursor.executemany(
                        "INSERT INTO order_log (sequence, tracking_id, body) VALUES (nextval('order_seq'), %s, %s)",
                        [(tracking_id, _BODY) for tracking_id in ids],
                    )
            count += batch
    written.append(count)


def _tail(conninfo: str, until: float, seen: list[int]) -> None:
    position, count = 0, 0
    with psycopg.connect(conninfo, autocommit=True) as connection:
        while True:
            done = time.monotonic() >= until  # One last read after the writers stopped.
            rows = connection.execute(
                "SELECT sequence FROM order_log WHERE sequence > %s ORDER BY sequence", (position,)
            ).fetchall()
            if rows:
                count += len(rows)
                position = rows[-1][0]
            if done:
                break
            time.sleep(0.001)
    seen.append(count)


def one_run(conninfo: str, ordered: bool, seconds: float, writers: int = 8, batch: int = 16) -> dict[str, float]:
    """Events per second and events a tailer skipped, for one run of ``seconds``."""
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(_SETUP)
    until = time.monotonic() + seconds
    written: list[int] = []
    seen: list[int] = []
    threads = [threading.Thread(target=_write, args=(conninfo, ordered, batch, until, written)) for _ in range(writers)]
    threads.append(threading.Thread(target=_tail, args=(conninfo, until + 0.5, seen)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    total = sum(written)
    return {"events_per_second": total / seconds, "events": total, "skipped": total - seen[0]}


def bench_commit_order(database: str, seconds: float, rounds: int) -> dict[str, Any]:
    """Ordered (the service's counter row) against unordered (a plain SEQUENCE), rounds alternating."""
    runs: dict[str, list[dict[str, float]]] = {"ordered": [], "unordered": []}
    for index in range(rounds):
        for name in ("ordered", "unordered") if index % 2 == 0 else ("unordered", "ordered"):
            runs[name].append(one_run(database, name == "ordered", seconds))
    ratios = [
        o["events_per_second"] / u["events_per_second"] for o, u in zip(runs["ordered"], runs["unordered"], strict=True)
    ]
    return {
        name: {
            "events_per_second": spread([run["events_per_second"] for run in results]),
            "skipped": [int(run["skipped"]) for run in results],
            "events": [int(run["events"]) for run in results],
        }
        for name, results in runs.items()
    } | {"ordered_vs_unordered": spread(ratios)}
