"""Follows the log: publishes every committed entry exactly once, in sequence order.

Entries reach a process in two ways: as *hints* that carry entries it already
holds (its own commits, or the writer process's feed), and as *changes* it is
told about (another process committed). Because the store makes sequences
visible in commit order, one rule covers both: whatever lies between the last
published sequence and the first entry in hand is read from the store first.
One task does the publishing, so the order holds whatever arrives when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from service.domain.entries import Entry

_LOGGER = logging.getLogger("service.tail")

ReadAfter = Callable[[int, int], Awaitable[Sequence[Entry]]]


class Tailer:
    """Publishes the log from ``position`` on, in order, exactly once."""

    def __init__(
        self,
        read_after: ReadAfter,
        publish: Callable[[Sequence[Entry]], None],
        *,
        position: int,
        page: int = 500,
        skipped: Callable[[int], None] = lambda sequence: None,
    ) -> None:
        self._read_after = read_after
        self._publish = publish
        self._skipped = skipped
        self._page = page
        self._hints: asyncio.Queue[Sequence[Entry] | None] = asyncio.Queue()
        self._change_queued = False
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        #: Every entry up to this sequence has been published.
        self.position = position

    def committed(self, entries: Sequence[Entry]) -> None:
        """Hand over entries known to be committed (in sequence order); earlier ones are read from the store."""
        if not entries:
            return
        if not self._busy and self._hints.empty() and entries[0].sequence == self.position + 1:
            self._emit(entries)  # They continue the log: publish now rather than a loop iteration later.
        else:
            self._hints.put_nowait(entries)

    def skip(self, first: int, last: int) -> bool:
        """Move past committed entries ``first``..``last`` nobody needs, if they continue the log; say whether."""
        if self._busy or not self._hints.empty() or first != self.position + 1:
            return False
        self.position = last
        self._skipped(last)
        return True

    def changed(self) -> None:
        """Say that the store may hold entries after ``position``."""
        if not self._change_queued:
            self._change_queued = True
            self._hints.put_nowait(None)

    def start(self) -> None:
        """Start publishing on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tailer")

    async def stop(self) -> None:
        """Stop publishing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            hint = await self._hints.get()
            self._busy = True
            try:
                if hint is None:
                    self._change_queued = False
                    await self._catch_up(None)
                else:
                    if hint[-1].sequence <= self.position:
                        continue
                    if hint[0].sequence > self.position + 1:
                        await self._catch_up(hint[0].sequence - 1)
                    self._emit(hint)
            except Exception:  # A failed read must not stop the log: the next hint tries again from `position`.
                _LOGGER.exception("following the log failed at sequence %d", self.position)
                await asyncio.sleep(0.1)
                self.changed()
            finally:
                self._busy = False

    async def _catch_up(self, through: int | None) -> None:
        """Read and publish from the store until ``through`` (or until it has nothing more)."""
        while through is None or self.position < through:
            page = await self._read_after(self.position, self._page)
            if not page:
                return
            self._emit(page)
            if len(page) < self._page:
                return

    def _emit(self, entries: Sequence[Entry]) -> None:
        fresh = [entry for entry in entries if entry.sequence > self.position]
        if fresh:
            self._publish(fresh)
            self.position = fresh[-1].sequence
