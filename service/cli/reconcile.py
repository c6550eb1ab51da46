"""``routee-callbacks reconcile --campaign ID``: backfill a campaign from Routee's tracking API."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

from service.config.settings import Settings, load_settings
from service.config.values import redact
from service.domain.errors import ConfigError, RouteeCallbacksError
from service.reconcile.reconciler import Counts, backfill
from service.routee.tracking import parse_tracked
from service.runtime.wiring import tracking_api
from service.store import open_store


def add_command(commands: Any, add_options: Callable[[argparse.ArgumentParser, set[str]], None]) -> None:
    """Register ``reconcile --campaign ID``."""
    command = commands.add_parser(
        "reconcile",
        help="backfill a campaign from Routee's tracking API",
        description="Walk every page of a campaign in Routee's tracking API and store the statuses the database "
        "does not have yet (as events from the tracking API). Works on the database directly, also while the "
        "service runs: its streams see the new events.",
    )
    command.add_argument("--campaign", required=True, metavar="ID", help="the campaign's tracking id")
    add_options(command, ROUTEE_FLAGS | {"--database", "--store-personal-data"})
    command.set_defaults(run=run_backfill)


ROUTEE_FLAGS = {"--routee-application-id", "--routee-application-secret", "--routee-api-url", "--routee-auth-url"}


def run_backfill(args: argparse.Namespace) -> int:
    """``reconcile --campaign ID``: exit 0 when the campaign was walked, 1 when it could not be, 2 for bad options."""
    try:
        settings = load_settings(vars(args), os.environ)
        credentials = settings.routee_credentials()
        if credentials is None:
            raise ConfigError("--routee-application-id", "and --routee-application-secret are needed to backfill")
    except ConfigError as ex:
        print(f"routee-callbacks: error: {ex}", file=sys.stderr)
        return 2
    try:
        counts = asyncio.run(_backfill(settings, args.campaign))
    except RouteeCallbacksError as ex:
        print(f"routee-callbacks: error: {redact(settings.database)}: {ex}", file=sys.stderr)
        return 1
    print(f"campaign {args.campaign}: {counts.looked_up} messages seen, {counts.new_events} new events")
    return 0


async def _backfill(settings: Settings, campaign: str) -> Counts:
    store = open_store(
        settings.database, synchronous=settings.sqlite_synchronous, personal_data=settings.store_personal_data
    )
    store.open()
    api = tracking_api(settings)
    assert api is not None
    try:
        return await backfill(store, api, parse_tracked, campaign)
    finally:
        await api.close()
        await store.close()
