"""The log as one process runs it: the batch writer, the follower that publishes in order, and retention.

``LocalLog`` is what writes: the writer process of a running service, or a
single process (tests, the command line). Commits of this process reach the
tailer directly; commits of others (another instance, a command-line backfill)
are noticed by watching the store and read from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from service.domain.entries import Entry
from service.domain.errors import RouteeCallbacksError
from service.log.batch_writer import BatchWriter
from service.log.tail import Tailer
from service.store import DropQuarantined, PruneChunk, Store

_LOGGER = logging.getLogger("service.log")


def _ignore_observation(seconds: float, size: int) -> None:
    pass


class LocalLog:
    """Writes to a store with group commit and publishes every committed entry, in order, to ``publish``."""

    def __init__(
        self,
        store: Store,
        publish: Callable[[Sequence[Entry]], None],
        *,
        observe_commit: Callable[[float, int], None] = _ignore_observation,
        observe_failure: Callable[[], None] = lambda: None,
        after_batch: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        watch_interval: float = 1.0,
    ) -> None:
        self.store = store
        self._clock = clock
        self._watch_interval = watch_interval
        self.tailer = Tailer(self._read_after, publish, position=0)
        self.writer = BatchWriter(
            store,
            on_commit=self.tailer.committed,
            observe_commit=observe_commit,
            observe_failure=observe_failure,
            after_batch=after_batch,
            clock=clock,
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, *, retention_seconds: float | None = None, quarantine_seconds: float | None = None) -> None:
        """Start writing and following from the store's head; prune events older than the retention and
        quarantined bodies not seen for ``quarantine_seconds``, if given."""
        self.tailer.position = await self.store.head()
        self.tailer.start()
        self.writer.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._watch(), name="log-watch"))
        if retention_seconds is not None:
            self._tasks.append(
                loop.create_task(self._prune_forever(retention_seconds, quarantine_seconds), name="retention")
            )

    async def stop(self) -> None:
        """Finish what was submitted, then stop."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.writer.stop()
        await self.tailer.stop()

    async def _read_after(self, position: int, limit: int) -> list[Entry]:
        return await self.store.entries_after(position, limit)

    async def _watch(self) -> None:
        while True:
            await self.store.wait_for_commits(self._watch_interval)
            self.tailer.changed()

    async def prune(self, received_before: float, *, chunk: int = 5000) -> int:
        """Delete events received before ``received_before`` (seconds since the epoch), a chunk per transaction."""
        cutoff_us = int(received_before * 1_000_000)
        total = 0
        while deleted := await self.writer.submit(PruneChunk(cutoff_us, chunk)):
            total += deleted
        return total

    async def log_time(self) -> float:
        """The time as far as retention is concerned: the clock, but never past the newest entry's receive time.

        A clock that jumps forward (an NTP correction, a restored snapshot) must not make what was just
        acknowledged look old: nothing received within the retention of the newest entry is ever pruned.
        """
        head = await self.store.head()
        newest = await self.store.entries_after(head - 1, 1) if head else []
        now = self._clock()
        return min(now, newest[0].receive_us / 1_000_000) if newest else now

    async def prune_expired(self, retention: float, quarantine: float | None = None) -> tuple[int, int]:
        """One retention pass: delete entries older than ``retention`` seconds and quarantined bodies not seen
        for ``quarantine`` seconds, both measured back from ``log_time``; return how many of each."""
        now = await self.log_time()
        deleted = await self.prune(now - retention)
        dropped = 0
        if quarantine is not None:
            dropped = await self.writer.submit(DropQuarantined(seen_before_us=int((now - quarantine) * 1_000_000)))
        return deleted, dropped

    async def _prune_forever(self, retention: float, quarantine: float | None) -> None:
        while True:
            try:
                deleted, dropped = await self.prune_expired(retention, quarantine)
            except RouteeCallbacksError as ex:
                _LOGGER.warning("pruning old entries failed: %s", ex)
            else:
                _LOGGER.info("pruned", extra={"events": deleted, "quarantined_bodies": dropped})
            await asyncio.sleep(min(retention / 24, 600.0))
