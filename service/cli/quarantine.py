"""The quarantine's commands: ``routee-callbacks quarantine list | replay | drop``.

They work on a store directly, the database of a running service included
(SQLite or PostgreSQL): what ``replay`` stores is a normal event, which the
running service's processes find in the log and stream.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from service.config.settings import ENV_PREFIX, Settings
from service.config.values import parse_database, redact
from service.domain.entries import Entry
from service.domain.errors import ConfigError, RejectedError, RouteeCallbacksError
from service.log.batch_writer import BatchWriter
from service.log.ingest import Parsers
from service.store import DropQuarantined, Quarantined, Release, Store, open_store


@dataclass
class ReplayReport:
    """What a replay did: the bodies now stored (with their entry, None for a duplicate) and those still refused."""

    stored: list[tuple[Quarantined, Entry | None]] = field(default_factory=list)
    refused: list[tuple[Quarantined, RejectedError]] = field(default_factory=list)


async def replay(store: Store, parsers: Parsers, ids: Sequence[int] | None) -> ReplayReport:
    """Validate quarantined bodies again; store what passes now (and release it from quarantine)."""
    report = ReplayReport()
    writer = BatchWriter(store)
    writer.start()
    try:
        for item in await store.quarantined(ids):
            try:
                job = parsers[item.kind](item.body)
            except RejectedError as ex:
                report.refused.append((item, ex))
                continue
            report.stored.append((item, await writer.submit(Release(item.id, job))))
    finally:
        await writer.stop()
    return report


def add_commands(commands: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Register ``quarantine list | replay | drop``."""
    quarantine = commands.add_parser(
        "quarantine",
        help="inspect, replay or drop the bodies refused for their content",
        description="Bodies from allowed senders refused with 400, 413, 415 or 422 are kept in quarantine. These "
        "commands work on the database directly, also while the service runs.",
    )
    actions = quarantine.add_subparsers(dest="action", required=True, parser_class=parser_class)
    database_help = f"SQLite file or postgresql:// URI (env {ENV_PREFIX}DATABASE; default: {Settings().database})"
    listing = actions.add_parser("list", help="one line per body held")
    listing.add_argument("--json", action="store_true", help="a JSON array of objects instead")
    replaying = actions.add_parser("replay", help="validate again; store what passes now")
    dropping = actions.add_parser("drop", help="delete bodies from the quarantine")
    for action in (replaying, dropping):
        chosen = action.add_mutually_exclusive_group(required=True)
        chosen.add_argument("ids", nargs="*", type=int, default=[], metavar="ID", help="quarantine ids")
        chosen.add_argument("--all", action="store_true", help="every body held")
    for action in (listing, replaying, dropping):
        action.add_argument("--database", metavar="PATH|URI", help=database_help)
        action.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run one quarantine command; exit 1 when the store cannot be used (or, for replay, something still fails)."""
    try:
        database = parse_database(args.database or os.environ.get(f"{ENV_PREFIX}DATABASE") or Settings().database)
    except ValueError as ex:
        print(f"routee-callbacks: error: {ConfigError('--database', str(ex))}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args, database))
    except RouteeCallbacksError as ex:
        print(f"routee-callbacks: error: {redact(database)}: {ex}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, database: str) -> int:
    store = open_store(database)
    store.open()
    try:
        if args.action == "list":
            _print_list(await store.quarantined(), as_json=args.json)
            return 0
        ids = None if args.all else list(args.ids)
        if args.action == "drop":
            dropped = await _write_one(store, DropQuarantined(ids=None if ids is None else tuple(ids)))
            print(f"dropped {dropped}")
            return 0
        from service.runtime.wiring import parsers  # The ingress's parsers, as the running service uses them.

        report = await replay(store, parsers(), ids)
        for item, event in report.stored:
            what = "a duplicate of a stored entry" if event is None else f"sequence {event.sequence}"
            print(f"replayed {item.id}: stored as {what}")
        for item, error in report.refused:
            print(f"still refused {item.id}: {error.reason}: {error}")
        return 1 if report.refused else 0
    finally:
        await store.close()


async def _write_one(store: Store, job: DropQuarantined) -> int:
    writer = BatchWriter(store)
    writer.start()
    try:
        result: int = await writer.submit(job)
        return result
    finally:
        await writer.stop()


def _when(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1_000_000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _print_list(items: list[Quarantined], *, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "id": item.id,
                        "received_at": _when(item.received_us),
                        "last_received_at": _when(item.last_us),
                        "peer": item.peer,
                        "status": item.status,
                        "reason": item.reason,
                        "detail": item.detail,
                        "attempts": item.attempts,
                        "kind": item.kind,
                        "body": item.body.decode("utf-8", errors="replace"),
                        "body_base64": base64.b64encode(item.body).decode(),
                    }
                    for item in items
                ],
                indent=2,
            )
        )
        return
    for item in items:
        print(
            f"{item.id:>6}  {_when(item.received_us)}  {item.kind:<7}  {item.peer:<15}  {item.status}"
            f"  {item.reason:<22}"
            f"  x{item.attempts:<3}  {len(item.body):>6} B  {item.detail}"
        )
    if not items:
        print("the quarantine is empty")
