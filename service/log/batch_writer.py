"""Group commit: every job submitted while a transaction runs goes into the next one.

The writer runs each transaction synchronously on its event loop. In the
service that loop belongs to the writer process and does nothing else, so the
callbacks that arrive during a commit wait in their sockets and make up the
next batch; no thread shares its GIL with a busy HTTP loop.

A batch that fails for any reason (a database error, a bug, a failing
callback) fails only its own jobs, with ``StoreUnavailableError`` (HTTP 503,
Routee retries), and the writer goes on with the next batch. If the writer's
task is gone, ``submit`` fails at once instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from service.domain.entries import Entry
from service.domain.errors import StoreUnavailableError
from service.store import SOLO_JOBS, Job, LogWriter

_LOGGER = logging.getLogger("service.batch_writer")


def _ignore_commit(entries: Sequence[Entry]) -> None:
    pass


def _ignore_observation(seconds: float, size: int) -> None:
    pass


def _nothing() -> None:
    pass


#: Told a job's outcome right after its transaction: (result, None), or (None, StoreUnavailableError).
Done = Callable[[Any, StoreUnavailableError | None], None]


class BatchWriter:
    """Runs submitted jobs in group-committed transactions on one store."""

    def __init__(
        self,
        store: LogWriter,
        *,
        on_commit: Callable[[Sequence[Entry]], None] = _ignore_commit,
        observe_commit: Callable[[float, int], None] = _ignore_observation,
        observe_failure: Callable[[], None] = _nothing,
        after_batch: Callable[[], None] = _nothing,
        clock: Callable[[], float] = time.time,
        max_batch: int = 512,
    ) -> None:
        self._store = store
        self._on_commit = on_commit
        self._observe_commit = observe_commit
        self._observe_failure = observe_failure
        self._after_batch = after_batch
        self._clock = clock
        self._max_batch = max_batch
        self._pending: list[tuple[Job, Done]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: The last failure of a batch, for /readyz; None once a batch succeeds again.
        self.last_error: str | None = None

    def start(self) -> None:
        """Start the writing task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batch-writer")

    async def stop(self) -> None:
        """Write what is already submitted, then stop; later submissions fail at once."""
        if self._task is None:
            return
        task, self._task = self._task, None
        self._stopping = True
        self._wakeup.set()
        await task

    @property
    def running(self) -> bool:
        """Whether the writing task is alive."""
        return self._task is not None and not self._task.done()

    async def submit(self, job: Job) -> Any:
        """Queue a job and return its result once its transaction is committed.

        Raises StoreUnavailableError when the transaction fails or the writer is not running. A caller that stops
        waiting cancels only its wait: the job is still written (and published).
        """
        return await self.enqueue(job)

    def enqueue(self, job: Job) -> asyncio.Future[Any]:
        """Queue a job; the future gets its result once committed, or StoreUnavailableError."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.enqueue_with(job, lambda result, error: _settle(future, result, error))
        return future

    def enqueue_with(self, job: Job, done: Done) -> None:
        """Queue a job; ``done`` is called right after its transaction, in the same loop iteration as the commit.

        The writer process answers workers this way: a future's callback would cost another loop iteration
        between the commit and the answer, and every request would wait for it.
        """
        if not self.running:
            done(None, StoreUnavailableError("the store's writer is not running"))
            return
        self._pending.append((job, done))
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                size = _batch_size(self._pending, self._max_batch)
                batch, self._pending = self._pending[:size], self._pending[size:]
                await self._write(batch)
            if self._stopping:
                return

    async def _write(self, batch: list[tuple[Job, Done]]) -> None:
        started = time.perf_counter()
        try:
            result = await self._store.write([job for job, _ in batch], int(self._clock() * 1_000_000))
        except StoreUnavailableError as ex:
            self._fail(batch, ex)
            return
        except Exception as ex:  # Possibly one job's fault: do not let it fail the others.
            if len(batch) > 1:
                for one in batch:
                    await self._write([one])
                return
            _LOGGER.error("store write failed", extra={"batch_size": 1}, exc_info=ex)
            self._fail(batch, StoreUnavailableError(f"the store cannot write: {ex.__class__.__name__}: {ex}"))
            return
        self.last_error = None
        try:
            self._observe_commit(time.perf_counter() - started, len(batch))
        except Exception:  # Committed is committed: a failing observer must not turn it into a 503.
            _LOGGER.exception("observing a commit failed")
        try:
            if result.entries:
                self._on_commit(result.entries)
        except Exception:  # The tailer reads what it missed from the store on its next hint.
            _LOGGER.exception("handing committed entries on failed")
        for (_, done), value in zip(batch, result.results, strict=True):
            done(value, None)
        self._after_batch()

    def _fail(self, batch: list[tuple[Job, Done]], error: StoreUnavailableError) -> None:
        _LOGGER.warning("store write failed: %s", error, extra={"batch_size": len(batch)})
        self.last_error = str(error)
        try:
            self._observe_failure()
        except Exception:
            _LOGGER.exception("observing a failed write failed")
        for _, done in batch:
            done(None, error)
        self._after_batch()


def _batch_size(pending: list[tuple[Job, Done]], most: int) -> int:
    """How many of the pending jobs go into the next transaction: up to ``most``, and a solo job alone."""
    for index, (job, _) in enumerate(pending[:most]):
        if isinstance(job, SOLO_JOBS):
            return index or 1
    return min(most, len(pending))


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # The caller stopped waiting; the job was written all the same.
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
