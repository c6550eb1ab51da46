"""Erasure: ``routee-callbacks forget`` on a database of many messages, timed, on each engine.

Each message is one status callback to its own number; one number in a thousand received a message and sent a
reply. The command runs as an operator runs it (the installed console script), and its own report is kept.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from typing import Any

from bench.harness import BIN, FIXTURE
from routee.callbacks.v1 import callback_pb2 as pb
from service.routee.callbacks import parse_callback
from service.store import AppendInbound, AppendStatus, open_store

NUMBER = "+306900000001"


async def _fill(database: str, messages: int) -> None:
    template = parse_callback(FIXTURE).callback
    store = open_store(database)
    store.open()
    try:
        for start in range(0, messages, 1000):
            jobs: list[AppendStatus | AppendInbound] = []
            for number in range(start, min(messages, start + 1000)):
                callback = pb.ViberCallback()
                callback.CopyFrom(template)
                callback.tracking_id = f"forget-{number}"
                callback.recipient = NUMBER if number % 1000 == 0 else f"+4479{number:08d}"
                callback.raw_json = json.dumps({"trackingId": callback.tracking_id, "to": callback.recipient})
                jobs.append(AppendStatus(callback))
                if number % 1000 == 0:
                    jobs.append(
                        AppendInbound(
                            pb.InboundMessage(
                                sender=NUMBER,
                                recipient="Routee",
                                text=f"reply {number}",
                                reference_tracking_id=callback.tracking_id,
                            )
                        )
                    )
            await store.write(jobs, time.time_ns() // 1000)
    finally:
        await store.close()


def bench_forget(engines: dict[str, str], messages: int) -> dict[str, Any]:
    """Fill each engine's database with ``messages``, then time ``forget`` on it."""
    results: dict[str, Any] = {}
    for engine, database in engines.items():
        started = time.monotonic()
        asyncio.run(_fill(database, messages))
        filled = time.monotonic() - started
        command = [str(BIN / "routee-callbacks"), "forget", "--recipient", "0030 690 000 0001", "--database", database]
        started = time.monotonic()
        output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=1800).stdout.strip()
        results[engine] = {
            "messages": messages,
            "fill_seconds": round(filled, 1),
            "forget_seconds": round(time.monotonic() - started, 2),
            "command": " ".join(command[1:]),
            "output": output,
        }
    return results
