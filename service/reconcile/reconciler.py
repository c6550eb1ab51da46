"""Reconciliation with Routee's tracking API: statuses no callback told us, asked for.

**In the service** (the writer process of the instance that holds the lease;
one in a cluster): a message whose current status is not final and has not
changed for ``after`` seconds is looked up. What the API answers becomes an
event exactly as a callback would (same key: tracking id, status name, date),
marked as from the tracking API; a change already stored is a duplicate, and a
later callback of the same change is one too. A lookup that changes nothing
sets the next one 4, then 16, 64… times ``after`` later; it stops at a final status, or
once the message is older than its TTL plus a day (Routee reports nothing
after that).

**Backfill** (``routee-callbacks reconcile --campaign ID``): every page of a
campaign, stored the same way; the running service's processes find the new
events in the log and stream them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.entries import DueCheck, StoredEvent
from service.domain.errors import CredentialsRejectedError, RejectedError, UnavailableError
from service.domain.rules import FROM_TRACKING_API, SMS, VIBER
from service.log.batch_writer import BatchWriter
from service.reconcile.tracking_api import TrackingApi
from service.routee.tracking import ParseTracked, tracked_callback, tracked_id
from service.store import AppendStatus, Reschedule, Store

_LOGGER = logging.getLogger("service.reconcile")

#: Each lookup that changes nothing waits this many times longer for the next.
BACKOFF = 4
#: Routee reports nothing about a message this long after its TTL.
GRACE_AFTER_TTL = 86_400.0
#: The TTL assumed for a message whose callbacks named none (Routee's Viber default).
DEFAULT_TTL = 86_400.0
#: Messages looked up per read of the due list.
DUE_PAGE = 50

#: Turns a tracking API object, in the callback's shape, into a callback (the ingress's own model).


class ReconcileState:
    """What reconciliation is doing, for ``/readyz`` in every process of the instance (a small JSON file)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def set(self, state: str, detail: str = "") -> None:
        """Record the state (running, standby, stopped) and why."""
        temporary = self._path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"state": state, "detail": detail}))
        os.replace(temporary, self._path)

    def get(self) -> dict[str, str] | None:
        """The state recorded, or None when reconciliation is not configured."""
        try:
            state: dict[str, str] = json.loads(self._path.read_text())
            return state
        except (OSError, ValueError):
            return None


@dataclass
class Counts:
    """What a reconciliation pass or a backfill did."""

    looked_up: int = 0
    new_events: int = 0


class Reconciler:
    """Looks up messages whose status has not changed for a while, and stores what Routee says."""

    def __init__(
        self,
        store: Store,
        writer: BatchWriter,
        api: TrackingApi,
        parse: ParseTracked,
        *,
        after: float,
        state: ReconcileState,
        found: Callable[[int], None] = lambda count: None,
        mismatched: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        idle: float = 10.0,
    ) -> None:
        self._store = store
        self._writer = writer
        self._api = api
        self._parse = parse
        self._after = after
        self._state = state
        self._found = found
        self._mismatched = mismatched
        self._clock = clock
        self._idle = idle

    async def run(self) -> None:
        """Reconcile until cancelled, or until Routee refuses the credentials (then say so, once, and stop)."""
        self._state.set("standby", "waiting for the reconciliation lease")
        while True:
            try:
                if not await self._store.hold_lease():
                    self._state.set("standby", "another instance reconciles")
                    await asyncio.sleep(self._idle)
                    continue
                self._state.set("running")
                counts = await self.reconcile_due()
            except CredentialsRejectedError as ex:
                _LOGGER.error("reconciliation stopped: %s", ex)
                self._state.set("stopped", str(ex))
                return
            except UnavailableError as ex:
                _LOGGER.warning("reconciliation paused: %s", ex)
                self._state.set("running", f"paused: {ex}")
                await asyncio.sleep(self._idle)
                continue
            if counts.looked_up < DUE_PAGE:
                await asyncio.sleep(self._idle)

    async def reconcile_due(self) -> Counts:
        """Look up one page of the messages due now."""
        counts = Counts()
        now = self._clock()
        for due in await self._store.due_checks(int((now - self._after) * 1_000_000), DUE_PAGE):
            counts.looked_up += 1
            counts.new_events += await self._check(due, now)
        return counts

    async def _check(self, due: DueCheck, now: float) -> int:
        current = due.current
        if now > _gives_up_at(current):
            await self._writer.submit(Reschedule(current.tracking_id, current.sequence, None))
            return 0
        events = [
            event
            for item in await self._api.message(current.tracking_id, current.channel) or []
            if (event := await self._store_tracked(current, item)) is not None
        ]
        if events:
            self._found(len(events))
        if not any(event.is_current for event in events):  # Nothing new: look again later, less often.
            wait = self._after * (BACKOFF ** (due.checks + 1) - 1)
            await self._writer.submit(Reschedule(current.tracking_id, current.sequence, int((now + wait) * 1_000_000)))
        return len(events)

    async def _store_tracked(self, current: StoredEvent, item: dict[str, Any]) -> StoredEvent | None:
        """Store what the API said of a message (of one part, for an SMS); the new event, or None."""
        try:
            callback = tracked_callback(self._parse, item, current.campaign_tracking_id, current.channel)
        except RejectedError as ex:
            _LOGGER.warning(
                "the tracking API's answer is not a status",
                extra={"tracking_id": current.tracking_id, "error": str(ex)},
            )
            return None
        if tracked_id(callback) != current.tracking_id:  # Not the message asked about: never stored under any id.
            self._mismatched()
            _LOGGER.warning(
                "the tracking API answered for another message; the answer is discarded",
                extra={"tracking_id": current.tracking_id, "answered_for": tracked_id(callback)[:256]},
            )
            return None
        event: StoredEvent | None = await self._writer.submit(AppendStatus(callback, source=FROM_TRACKING_API))
        return event


def _gives_up_at(current: StoredEvent) -> float:
    """When Routee stops knowing anything new of a message: its TTL plus a day after it was created."""
    if current.channel == SMS:  # An SMS names no TTL: Routee's default validity is assumed.
        return current.update_us / 1_000_000 + DEFAULT_TTL + GRACE_AFTER_TTL
    callback = pb.ViberCallback.FromString(current.callback)
    created = callback.create_time.ToMicroseconds() if callback.HasField("create_time") else current.update_us
    ttl = callback.ttl if callback.HasField("ttl") else DEFAULT_TTL
    return created / 1_000_000 + ttl + GRACE_AFTER_TTL


async def backfill(
    store: Store, api: TrackingApi, parse: ParseTracked, campaign_tracking_id: str, *, page_size: int = 100
) -> Counts:
    """Store every message of a campaign the tracking API knows, Viber and SMS (each part); a status already stored
    is a duplicate."""
    counts = Counts()
    seen: set[str] = set()  # An SMS's parts are one message.
    writer = BatchWriter(store)
    writer.start()
    try:
        for channel in (VIBER, SMS):
            page = 0
            while True:
                result = await api.campaign_page(campaign_tracking_id, page, page_size, channel)
                jobs = []
                for item in result.items:
                    try:
                        callback = tracked_callback(parse, item, campaign_tracking_id, channel)
                        seen.add(tracked_id(callback))
                        jobs.append(writer.enqueue(AppendStatus(callback, source=FROM_TRACKING_API)))
                    except RejectedError as ex:
                        _LOGGER.warning("skipped an object the tracking API returned: %s", ex)
                counts.new_events += sum(1 for event in await asyncio.gather(*jobs) if event is not None)
                if result.last or not result.items:
                    break
                page += 1
        counts.looked_up = len(seen)
        return counts
    finally:
        await writer.stop()
