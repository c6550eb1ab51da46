"""The service's parts wired in one process, for component tests: a real store (either engine), the log with its
group commit and follower, the broker and the Falcon app."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import falcon.asgi

from http_ingress.allowlist import Allowlist
from http_ingress.app import create_app
from routee.callbacks.v1 import callback_pb2 as pb
from service.api.broker import Broker
from service.config.settings import Settings
from service.domain.entries import StoredEvent, StoredInbound
from service.log.ingest import LocalIngest
from service.log.local import LocalLog
from service.monitoring.metrics import Metrics
from service.routee.callbacks import parse_callback, parse_inbound
from service.runtime.wiring import parsers, refusals
from service.store import AppendInbound, AppendStatus, Store, open_store

_T = TypeVar("_T")
LOOPBACK = Allowlist(allow_cidrs=[ipaddress.ip_network("127.0.0.0/8")])


class Embedded:
    """One process doing what a whole instance does."""

    def __init__(self, database: str, *, allowlist: Allowlist = LOOPBACK, queue_size: int = 1024) -> None:
        self.store: Store = open_store(database)
        self.broker = Broker(queue_size)
        self.metrics = Metrics()
        self.log = LocalLog(
            self.store, self.metrics.published(self.broker.publish), observe_commit=self.metrics.observe_commit
        )
        # The service's own factories: the parsers and quarantine rules of a worker, not a copy of them.
        self.ingest = LocalIngest(self.log.writer, parsers(self.metrics), refusals(Settings(quarantine_max_mb=1)))
        self.app: falcon.asgi.App = create_app(self.ingest, allowlist, self.metrics)

    async def start(self) -> None:
        """Open the store and start the log."""
        self.store.open()
        await self.log.start()
        self.broker.last_sequence = self.log.tailer.position

    async def stop(self) -> None:
        """Stop the log and close the store."""
        await self.log.stop()
        await self.store.close()

    async def append(self, callback: pb.ViberCallback | bytes) -> StoredEvent | None:
        """Store one callback (a parsed one, or a raw body) through group commit."""
        if isinstance(callback, bytes):
            callback = parse_callback(callback).callback
        event: StoredEvent | None = await self.log.writer.submit(AppendStatus(callback))
        return event

    async def append_inbound(self, body: bytes) -> StoredInbound | None:
        """Store one inbound message (a raw body) through group commit."""
        entry: StoredInbound | None = await self.log.writer.submit(AppendInbound(parse_inbound(body).message))
        return entry

    async def settle(self, deadline: float = 5.0) -> None:
        """Wait until everything committed so far has been published."""
        async with asyncio.timeout(deadline):
            while self.log.tailer.position < await self.store.head():
                await asyncio.sleep(0.001)


class EmbeddedThread:
    """An Embedded service on an event loop of its own thread, for synchronous tests (hypothesis)."""

    def __init__(self, database: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.embedded = self.call(self._started(database))

    async def _started(self, database: str) -> Embedded:
        embedded = Embedded(database)
        await embedded.start()
        return embedded

    def call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run a coroutine on the service's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def close(self) -> None:
        """Stop the service and its loop."""
        self.call(self.embedded.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
