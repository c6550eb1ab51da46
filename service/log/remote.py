"""A worker's side of the private socket: its writes go to the writer process, the log comes back as a feed.

While the writer process is unreachable (restarting after a crash), a write
fails at once with ``StoreUnavailableError`` (HTTP 503: Routee retries) and
the client reconnects by itself. An answer that does not come within
``timeout`` is a 503 too: the write may still commit, and Routee's retry is
then recognised as a duplicate. After every (re)connection the worker's
tailer reads whatever it missed from the store, so its streams stay complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.entries import Entry
from service.domain.errors import RejectedError, StoreUnavailableError, UnavailableError
from service.log import ipc
from service.log.ingest import Kept, Parsers, identity, parse_or_refuse
from service.log.tail import Tailer
from service.store import AppendStatus, LogReader

_LOGGER = logging.getLogger("service.writer_client")


class WriterClient:
    """One connection to the writer process, shared by every request of this worker."""

    def __init__(
        self,
        path: Path,
        *,
        on_feed: Callable[[ipc.FeedFrame], None],
        on_connect: Callable[[], None],
        timeout: float = 1.5,
        backoff: tuple[float, float] = (0.05, 1.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._on_feed = on_feed
        self._on_connect = on_connect
        self._timeout = timeout
        self._backoff = backoff
        self._clock = clock
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[int | None], float]] = {}
        self._protocol: _ClientProtocol | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def connected(self) -> bool:
        """Whether the writer process is connected now."""
        return self._protocol is not None

    def start(self) -> None:
        """Connect (and keep reconnecting) in the background."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._connect_forever(), name="writer-connection"),
            loop.create_task(self._expire_forever(), name="writer-timeouts"),
        ]

    async def stop(self) -> None:
        """Disconnect and fail what still waits."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._protocol is not None:
            self._protocol.close()
        self._fail_all("the worker is shutting down")

    async def request(self, frame: Callable[[int], bytes]) -> int | None:
        """Send a request (``frame`` builds it from its id) and return the answer: the new sequence, or None.

        Raises the error the writer answered, or StoreUnavailableError when it cannot be reached or is too slow.
        """
        protocol = self._protocol
        if protocol is None:
            raise StoreUnavailableError("the writer process is not reachable")
        request_id = next(self._ids) & 0xFFFFFFFF
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (future, self._clock() + self._timeout)
        protocol.send(frame(request_id))
        return await future

    def answer(self, kind: int, payload: memoryview) -> None:
        """Act on one frame from the writer process."""
        if kind == ipc.FEED:
            self._on_feed(ipc.FeedFrame(payload))
            return
        if kind == ipc.KEPT:
            request_id, sequence = ipc.parse_kept(payload)
            waiting = self._pending.pop(request_id, None)
            if waiting is not None and not waiting[0].done():
                waiting[0].set_result(sequence)
        elif kind == ipc.FAILED:
            request_id, error = ipc.parse_failed(payload)
            waiting = self._pending.pop(request_id, None)
            if waiting is not None and not waiting[0].done():
                waiting[0].set_exception(error)
        else:
            raise ipc.FrameError(f"unknown frame kind {kind}")

    async def _connect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self._backoff[0]
        reported = False
        while True:
            try:
                _, protocol = await loop.create_unix_connection(lambda: _ClientProtocol(self), str(self._path))
            except OSError as ex:
                if not reported:
                    _LOGGER.warning("cannot reach the writer process; retrying", extra={"error": str(ex)})
                    reported = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            if reported:
                _LOGGER.info("connected to the writer process")
            reported, delay = False, self._backoff[0]
            self._protocol = protocol
            self._on_connect()
            await protocol.lost
            self._protocol = None
            self._fail_all("lost the connection to the writer process")
            _LOGGER.warning("lost the connection to the writer process; reconnecting")

    async def _expire_forever(self) -> None:
        # One sweep for every request instead of a timer each: cheaper at thousands of requests a second.
        while True:
            await asyncio.sleep(min(0.1, self._timeout / 4))
            now = self._clock()
            expired = [request_id for request_id, (_, deadline) in self._pending.items() if deadline <= now]
            for request_id in expired:
                future, _ = self._pending.pop(request_id)
                if not future.done():
                    future.set_exception(
                        StoreUnavailableError(f"the writer process did not answer within {self._timeout:g} s")
                    )

    def _fail_all(self, message: str) -> None:
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(StoreUnavailableError(message))


class _ClientProtocol(ipc.FramedProtocol):
    peer = "the writer process"

    def __init__(self, client: WriterClient) -> None:
        super().__init__()
        self._client = client
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.lost.done():
            self.lost.set_result(None)

    def received(self, kind: int, payload: memoryview) -> None:
        self._client.answer(kind, payload)


class RemoteIngest:
    """An Ingest that validates here, in the worker, and asks the writer process to keep."""

    def __init__(self, client: WriterClient, parsers: Parsers) -> None:
        self._client = client
        self._parsers = parsers

    async def keep(self, kind: str, body: bytes, peer: str) -> Kept:
        """Validate, then send the protobuf for the writer process to store; a body that cannot be kept goes to
        quarantine."""
        job = await parse_or_refuse(self, self._parsers, kind, body, peer)
        if isinstance(job, AppendStatus):
            sms = isinstance(job.callback, pb.SmsCallback)
            frame_kind, message = ipc.SUBMIT_SMS if sms else ipc.SUBMIT_STATUS, job.callback.SerializeToString()
        else:
            frame_kind, message = ipc.SUBMIT_INBOUND, job.message.SerializeToString()
        sequence = await self._client.request(lambda request_id: ipc.request(frame_kind, request_id, message))
        return Kept(sequence, identity(job))

    async def refuse(self, kind: str, body: bytes, peer: str, error: RejectedError) -> None:
        """Have the writer process quarantine a body this worker refused; its answer is the refusal itself."""
        try:
            await self._client.request(lambda request_id: ipc.refusal(request_id, peer, error, body, kind))
        except RejectedError:
            return  # Kept: the writer answers with the refusal it recorded.

    async def probe(self) -> None:
        """Ask the writer process to write a heartbeat."""
        await self._client.request(lambda request_id: ipc.request(ipc.PROBE, request_id))


class RemoteLog:
    """The log as a worker follows it: the writer process's feed, gaps filled from the store.

    While the worker has no stream open (``wanted`` says so), a frame that continues the log is not decoded:
    the position just moves past it.
    """

    def __init__(
        self,
        path: Path,
        reader: LogReader,
        publish: Callable[[Sequence[Entry]], None],
        *,
        skipped: Callable[[int], None],
        wanted: Callable[[], bool],
    ) -> None:
        self._reader = reader
        self._wanted = wanted
        self.tailer = Tailer(self._read_after, publish, position=0, skipped=skipped)
        self.client = WriterClient(path, on_feed=self._on_feed, on_connect=self.tailer.changed)

    def _on_feed(self, frame: ipc.FeedFrame) -> None:
        if self._wanted() or not self.tailer.skip(frame.first, frame.last):
            self.tailer.committed(frame.entries())

    async def start(self, retry: tuple[float, float] = (0.1, 2.0)) -> int:
        """Follow from the store's head, and connect to the writer process; return the head.

        Until the store answers (PostgreSQL may be down while a worker starts) it is asked again, with backoff
        from ``retry[0]`` to ``retry[1]`` seconds: a worker starts whatever the store's state, and answers 503
        meanwhile.
        """
        delay, most = retry
        while True:
            try:
                self.tailer.position = await self._reader.last_sequence()
                break
            except UnavailableError as ex:
                _LOGGER.warning("cannot read the log's head yet; trying again", extra={"error": str(ex)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, most)
        self.tailer.start()
        self.client.start()
        return self.tailer.position

    async def stop(self) -> None:
        """Disconnect and stop following."""
        await self.client.stop()
        await self.tailer.stop()

    async def _read_after(self, position: int, limit: int) -> list[Entry]:
        return await self._reader.entries_after(position, limit)
