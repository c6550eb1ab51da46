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
from dataclasses import dataclass, replace

from service.domain.entries import Entry
from service.domain.errors import RouteeCallbacksError
from service.domain.limits import MAX_PRUNE_CHUNK, MIN_PRUNE_CHUNK, PRUNE_TRANSACTION_SECONDS
from service.log.batch_writer import BatchWriter
from service.log.tail import Tailer
from service.store import DropQuarantined, PruneChunk, Store

_LOGGER = logging.getLogger("service.log")


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each kind of stored data is kept, in seconds: status events (a message goes with its last one),
    replies (None: as long as events), campaign summaries once their last message is gone (None: for ever) and
    quarantined bodies after they were last received (None: for ever)."""

    events: float
    replies: float | None = None
    campaigns: float | None = None
    quarantine: float | None = None


def next_chunk(limit: int, took: float) -> int:
    """The size of the next retention chunk after one of ``limit`` rows took ``took`` seconds: halved when it took
    longer than PRUNE_TRANSACTION_SECONDS, doubled when it took less than half of it, within the bounds."""
    if took > PRUNE_TRANSACTION_SECONDS:
        limit //= 2
    elif took < PRUNE_TRANSACTION_SECONDS / 2:
        limit *= 2
    return max(MIN_PRUNE_CHUNK, min(MAX_PRUNE_CHUNK, limit))


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

    async def start(self, *, retention: Retention | None = None) -> None:
        """Start writing and following from the store's head; with a ``retention``, prune what outlived it."""
        self.tailer.position = await self.store.head()
        self.tailer.start()
        self.writer.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._watch(), name="log-watch"))
        if retention is not None:
            self._tasks.append(loop.create_task(self._prune_forever(retention), name="retention"))

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

    async def prune(self, job: PruneChunk) -> int:
        """Run ``job`` until it deletes nothing more, a chunk per transaction, each near PRUNE_TRANSACTION_SECONDS
        and followed by a rest as long (ingest keeps at least half the writer's time); how many rows went."""
        total = 0
        while True:
            started = time.monotonic()
            deleted = await self.writer.submit(job)
            if not deleted:
                return total
            total += deleted
            took = time.monotonic() - started
            job = replace(job, limit=next_chunk(job.limit, took))
            await asyncio.sleep(took)

    async def log_time(self) -> float:
        """The time as far as retention is concerned: the clock, but never past the newest entry's receive time.

        A clock that jumps forward (an NTP correction, a restored snapshot) must not make what was just
        acknowledged look old: nothing received within the retention of the newest entry is ever pruned.
        """
        head = await self.store.head()
        newest = await self.store.entries_after(head - 1, 1) if head else []
        now = self._clock()
        return min(now, newest[0].receive_us / 1_000_000) if newest else now

    async def prune_expired(self, retention: Retention) -> tuple[int, int]:
        """One retention pass, every period measured back from ``log_time``: delete what outlived ``retention``;
        return how many rows (entries and campaigns) and quarantined bodies went."""
        now = await self.log_time()

        def cutoff(seconds: float) -> int:
            return int((now - seconds) * 1_000_000)

        deleted = await self.prune(
            PruneChunk(
                cutoff(retention.events),
                replies_cutoff_us=None if retention.replies is None else cutoff(retention.replies),
                campaigns_cutoff_us=None if retention.campaigns is None else cutoff(retention.campaigns),
            )
        )
        dropped = 0
        if retention.quarantine is not None:
            dropped = await self.writer.submit(DropQuarantined(seen_before_us=cutoff(retention.quarantine)))
        return deleted, dropped

    async def _prune_forever(self, retention: Retention) -> None:
        while True:
            try:
                deleted, dropped = await self.prune_expired(retention)
            except RouteeCallbacksError as ex:
                _LOGGER.warning("pruning old entries failed: %s", ex)
            else:
                _LOGGER.info("pruned", extra={"events": deleted, "quarantined_bodies": dropped})
            await asyncio.sleep(min(retention.events / 24, 600.0))
