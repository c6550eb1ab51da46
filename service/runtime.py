"""The composition root: builds every part of the service inside the worker and runs its life cycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any

import falcon.asgi
import grpc
from grpc_health.v1 import health, health_pb2

from http_ingress.allowlist import Allowlist, DnsAllowlist, DnspythonResolver
from http_ingress.app import create_app
from service.broker import Broker
from service.config import Settings
from service.errors import RouteeCallbacksError
from service.metrics import Metrics
from service.server import create_server
from service.servicer import SERVICE_NAME, MessageStatusServicer
from service.store import SqliteStore

_LOGGER = logging.getLogger(__name__)


class Runtime:
    """Starts the store, the gRPC server and the allowlist refresher on the ASGI server's event loop, and stops them.

    Falcon calls ``process_startup`` and ``process_shutdown`` on ASGI lifespan
    events, so gRPC, the broker and the HTTP app share one event loop in the
    one worker process.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: SqliteStore,
        broker: Broker,
        servicer: MessageStatusServicer,
        allowlist: Allowlist,
    ) -> None:
        self._settings = settings
        self._store = store
        self._broker = broker
        self._servicer = servicer
        self._allowlist = allowlist
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs predates aio
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.grpc_port: int | None = None

    async def process_startup(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        """Open the store, start gRPC and the allowlist refresher."""
        self._store.open()
        # Live-only streams start after what is already stored, also after a restart.
        self._broker.last_sequence = await self._store.last_sequence()
        self._server, self.grpc_port = create_server(
            self._settings.grpc_bind, self._servicer, self._health, max_streams=self._settings.max_streams
        )
        await self._server.start()
        if self._allowlist.dns is not None:
            self._tasks.append(asyncio.create_task(self._allowlist.dns.run(), name="allowlist-refresh"))
        self._tasks.append(asyncio.create_task(self._prune_forever(), name="retention"))
        await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        # Everything built so far lives as long as the process: keep the cyclic GC from scanning it again on
        # every full collection (50-90 ms pauses with 1 000 streams open, measured; see docs/benchmarks.md).
        gc.freeze()
        _LOGGER.info(
            "routee-callbacks started",
            extra={
                "grpc_port": self.grpc_port,
                "database": str(self._settings.database),
                "allowlist_host": self._settings.allowlist_host,
            },
        )

    async def process_shutdown(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        """Stop in order: health NOT_SERVING, end streams (UNAVAILABLE), drain gRPC, stop DNS, close the store."""
        await self._health.enter_graceful_shutdown()
        self._broker.close()
        if self._server is not None:
            await self._server.stop(self._settings.shutdown_grace)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.get_running_loop().run_in_executor(None, self._store.close)
        _LOGGER.info("routee-callbacks stopped")

    async def _prune_forever(self) -> None:
        retention = self._settings.retention_hours * 3600
        while True:
            try:
                deleted = await self._store.prune(time.time() - retention)
            except RouteeCallbacksError as ex:
                _LOGGER.warning("pruning old events failed: %s", ex)
            else:
                if deleted:
                    _LOGGER.info("pruned old events", extra={"deleted": deleted})
            await asyncio.sleep(min(retention / 24, 600.0))


def build_app(settings: Settings) -> falcon.asgi.App[Any, Any]:
    """Wire the service together; call it in the worker, after the fork."""
    metrics = Metrics()
    broker = Broker(settings.subscriber_queue_size)
    store = SqliteStore(
        settings.database,
        synchronous=settings.sqlite_synchronous,
        on_commit=broker.publish,
        observe_commit=metrics.observe_commit,
    )
    dns_allowlist = None
    if settings.allowlist_host:
        dns_allowlist = DnsAllowlist(
            settings.allowlist_host,
            DnspythonResolver(settings.dns_server),
            min_ttl=settings.dns_min_ttl,
            max_ttl=settings.dns_max_ttl,
            max_stale=settings.dns_max_stale,
        )
        metrics.allowlist_age_seconds.set_function(dns_allowlist.age)
        metrics.allowlist_addresses.set_function(lambda: len(dns_allowlist.status()["addresses"]))
    metrics.last_sequence.set_function(lambda: broker.last_sequence)
    allowlist = Allowlist(
        allow_cidrs=settings.allow_cidrs, trusted_proxies=settings.trusted_proxies, dns_allowlist=dns_allowlist
    )
    servicer = MessageStatusServicer(
        store,
        broker,
        metrics,
        max_streams=settings.max_streams,
        progress_interval=settings.progress_interval,
    )
    runtime = Runtime(settings, store=store, broker=broker, servicer=servicer, allowlist=allowlist)
    return create_app(store, allowlist, metrics, body_timeout=settings.body_timeout, middleware=[runtime])
