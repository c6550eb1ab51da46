"""``routee-callbacks forget --recipient NUMBER``: erase one person from a database, the running service's
included (SQLite or PostgreSQL), and say what changed, in counts only."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from service.config.settings import load_settings
from service.config.values import redact
from service.domain.errors import ConfigError, RouteeCallbacksError
from service.routee.privacy import e164
from service.store import Erase, Erased, Store, open_store


def add_command(commands: Any, add_options: Callable[[argparse.ArgumentParser, set[str]], None]) -> None:
    """Register ``forget``."""
    command = commands.add_parser(
        "forget",
        help="erase every stored trace of a phone number (a data subject's erasure request)",
        description="Erase a phone number from every status callback it received, every reply it sent or received "
        "(with what it wrote), raw_json included, and drop the quarantined bodies that hold it; keep tracking ids, "
        "statuses, times, prices and campaign counts. Numbers are compared in E.164 form. Works on the database "
        "directly, also while the service runs. See docs/privacy.md.",
    )
    command.add_argument("--recipient", required=True, metavar="NUMBER", help="the phone number, in any usual form")
    add_options(command, {"--database"})
    command.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the number is erased, 1 when the store cannot be used, 2 for a bad option."""
    number = e164(args.recipient)
    try:
        if number is None:
            raise ConfigError("--recipient", f"{args.recipient!r} is not a phone number")
        database = load_settings(vars(args), os.environ).database
    except ConfigError as ex:
        print(f"routee-callbacks: error: {ex}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        total = asyncio.run(forget(open_store(database, secure_delete=True), number))
    except RouteeCallbacksError as ex:
        print(f"routee-callbacks: error: {redact(database)}: {ex}", file=sys.stderr)
        return 1
    counts = {
        "callbacks": total.callbacks,
        "replies": total.replies,
        "quarantined_bodies": total.quarantined,
        "seconds": round(time.monotonic() - started, 3),
    }
    if args.json:
        print(json.dumps(counts))
    else:
        print(
            f"erased from {total.callbacks} status callbacks and {total.replies} replies; dropped"
            f" {total.quarantined} quarantined bodies; {counts['seconds']} s"
        )
    return 0


async def forget(store: Store, number: str) -> Erased:
    """Erase window after window until the log's head (entries stored meanwhile included), then purge."""
    store.open()
    try:
        total = Erased()
        job = Erase(number)
        while True:
            (done,) = (await store.write([job], time.time_ns() // 1000)).results
            assert isinstance(done, Erased)
            total = Erased(
                total.callbacks + done.callbacks,
                total.replies + done.replies,
                total.quarantined + done.quarantined,
            )
            if done.done:
                break
            job = Erase(number, job.after_sequence + job.limit, job.after_quarantine_id + job.limit, job.limit)
        await store.purge()
        return total
    finally:
        await store.close()
