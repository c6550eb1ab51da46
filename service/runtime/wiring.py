"""The composition root: the one module that builds the service from its parts.

It is the only module that imports both the core (``service``) and the HTTP
adapter (``http_ingress``); nothing imports it but the process model. It builds
two kinds of process:

- a **worker** (``build_worker_app``): the Falcon ASGI app, the gRPC server and
  the broker on one event loop; validates what Routee posts, reads from the
  store, writes through the writer process, follows the log it feeds;
- the **writer process** (``run_writer``): the instance's one writer — it
  group-commits what workers send, prunes, reconciles, and feeds the log
  back to every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import falcon.asgi
import grpc
import uvloop
from grpc_health.v1 import health, health_pb2

from http_ingress.allowlist import Allowlist, DnsAllowlist, DnspythonResolver
from http_ingress.app import create_app
from http_ingress.connections import Connection, ConnectionPolicy, connection_class
from http_ingress.errors import http_status
from http_ingress.readiness import Readiness
from service.api.broker import Broker
from service.api.server import create_server
from service.api.servicer import SERVICE_NAME, MessageStatusServicer
from service.config.settings import Settings
from service.config.tls import ReloadingContext, grpc_certificates, grpc_credentials, http_certificates
from service.config.values import redact
from service.domain.errors import RouteeCallbacksError
from service.domain.rules import INBOUND, SMS_INBOUND, SMS_STATUS, STATUS
from service.log.ingest import AdjustmentRecorder, ParseBody, Parsers, Refusals, job
from service.log.local import LocalLog, Retention
from service.log.remote import RemoteIngest, RemoteLog
from service.log.writer import Feed, WriterServer
from service.monitoring.metrics import Metrics
from service.reconcile.reconciler import Reconciler, ReconcileState
from service.reconcile.tracking_api import TrackingApi
from service.routee.callbacks import parse_callback, parse_inbound
from service.routee.parsed import ParsedCallback, ParsedInbound
from service.routee.sms import TOLERATED_FIELDS, parse_sms, parse_sms_inbound
from service.routee.tracking import parse_tracked
from service.runtime.process import WRITER_STOP_SIGNAL, Instance
from service.store import Store, open_store

_LOGGER = logging.getLogger("service.wiring")


class WorkerRuntime:
    """Starts a worker's log, gRPC server and allowlist refresher on the ASGI server's loop, and stops them.

    Falcon calls ``process_startup`` and ``process_shutdown`` on ASGI lifespan events, so gRPC, the broker and
    the HTTP app share one event loop in the worker process.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        log: RemoteLog,
        broker: Broker,
        servicer: MessageStatusServicer,
        allowlist: Allowlist,
        readiness: Readiness,
        metrics: Metrics,
        boot_failed: Callable[[BaseException], None] = lambda error: None,
    ) -> None:
        self._settings = settings
        self._boot_failed = boot_failed
        self._readiness = readiness
        self._metrics = metrics
        self._store = store
        self._log = log
        self._broker = broker
        self._servicer = servicer
        self._allowlist = allowlist
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs predates aio
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.grpc_port: int | None = None

    async def process_startup(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        """Start gRPC, the allowlist refresher and following the log; a failure is recorded for the master."""
        try:
            await self._start()
        except Exception as ex:
            self._boot_failed(ex)
            raise

    async def _start(self) -> None:
        # Always SO_REUSEPORT, one worker too: a worker started by SIGHUP or SIGTTIN binds beside those still
        # running. The master's port lock keeps a second instance off the port.
        self._server, self.grpc_port = create_server(
            self._settings.grpc_bind,
            self._servicer,
            self._health,
            max_streams=self._settings.max_streams,
            reuse_port=True,
            credentials=grpc_credentials(files) if (files := grpc_certificates(self._settings)) else None,
        )
        await self._server.start()
        # The store may not answer yet (PostgreSQL down): the worker serves meanwhile (503, UNAVAILABLE).
        self._tasks.append(asyncio.create_task(self._follow_log(), name="log-start"))
        if self._allowlist.dns is not None:
            self._tasks.append(asyncio.create_task(self._allowlist.dns.run(), name="allowlist-refresh"))
        self._tasks.append(asyncio.create_task(self._refresh_metrics(), name="metrics-refresh"))
        self._tasks.append(asyncio.create_task(self._sample_readiness(), name="readiness-sample"))
        # Everything built so far lives as long as the process: keep the cyclic GC from scanning it again on
        # every full collection (50-90 ms pauses with 1 000 streams open, measured; see docs/benchmarks.md).
        gc.freeze()
        _LOGGER.info("worker started", extra={"grpc_port": self.grpc_port, "pid": os.getpid()})

    async def _follow_log(self) -> None:
        # Live-only streams start after what is already stored, also after a restart.
        self._broker.follow_from(await self._log.start())
        await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    async def _refresh_metrics(self) -> None:
        # Other workers' /metrics read this process's sampled values from its files: keep them current.
        while True:
            self._metrics.refresh()
            await asyncio.sleep(1.0)

    async def _sample_readiness(self, interval: float = 5.0) -> None:
        # For alerts: Prometheus scrapes /metrics, not /readyz.
        while True:
            checks = await self._readiness.checks()
            self._metrics.observe_readiness({name: check["ready"] for name, check in checks.items()})
            await asyncio.sleep(interval)

    async def process_shutdown(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        """Stop in order: health NOT_SERVING, end streams (UNAVAILABLE), drain gRPC, stop DNS and the log."""
        await self._health.enter_graceful_shutdown()
        self._broker.close()
        if self._server is not None:
            await self._server.stop(self._settings.shutdown_grace)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._log.stop()
        await self._store.close()
        _LOGGER.info("worker stopped", extra={"pid": os.getpid()})


def build_allowlist(settings: Settings, metrics: Metrics) -> Allowlist:
    """The static networks and, when a name is configured, the DNS allowlist refreshed in the background."""
    dns_allowlist = None
    if settings.allowlist_host:
        dns_allowlist = DnsAllowlist(
            settings.allowlist_host,
            DnspythonResolver(settings.dns_server),
            min_ttl=settings.dns_min_ttl,
            max_ttl=settings.dns_max_ttl,
            max_stale=settings.dns_max_stale,
        )
        metrics.watch_allowlist(dns_allowlist)
    return Allowlist(
        allow_cidrs=settings.allow_cidrs,
        trusted_proxies=settings.trusted_proxies,
        dns_allowlist=dns_allowlist,
        monitor_cidrs=settings.monitor_cidrs,
    )


@dataclass(frozen=True)
class WorkerParts:
    """What a worker serves: the ASGI app, and the protocol class its HTTP connections are held to."""

    app: falcon.asgi.App[Any, Any]
    connection_class: type[Connection]


def build_worker(settings: Settings, instance: Instance) -> WorkerParts:
    """Wire one worker; call it in the worker, after the fork."""
    metrics = Metrics(multiprocess_dir=instance.metrics_dir)
    metrics.expect_adjustments(TOLERATED_FIELDS)
    broker = Broker(settings.subscriber_queue_size, following=False)
    store = open_store(settings.database, synchronous=settings.sqlite_synchronous)

    def skipped(sequence: int) -> None:
        broker.advance(sequence)
        metrics.last_sequence.set(sequence)

    log = RemoteLog(
        instance.writer_socket,
        store,
        metrics.published(broker.publish),
        skipped=skipped,
        wanted=lambda: broker.subscriber_count > 0,
    )
    servicer = MessageStatusServicer(
        store,
        broker,
        metrics,
        max_streams=settings.max_streams,
        max_streams_per_client=settings.max_streams_per_client,
        progress_interval=settings.progress_interval,
    )
    allowlist = build_allowlist(settings, metrics)
    ingest = RemoteIngest(log.client, parsers(metrics))
    readiness = Readiness(ingest, allowlist)
    runtime = WorkerRuntime(
        settings,
        store=store,
        log=log,
        broker=broker,
        servicer=servicer,
        allowlist=allowlist,
        readiness=readiness,
        metrics=metrics,
        boot_failed=instance.record_boot_failure,
    )
    reconcile = ReconcileState(instance.reconcile_state).get if settings.routee_credentials() else None
    app = create_app(ingest, allowlist, metrics, middleware=[runtime], readiness=readiness, reconcile=reconcile)
    return WorkerParts(app, connection_class(connection_policy(settings, allowlist, metrics)))


def connection_policy(settings: Settings, allowlist: Allowlist, metrics: Metrics) -> ConnectionPolicy:
    """What a worker's HTTP connections are held to: TLS, time limits, capacity, and who may get in."""
    return ConnectionPolicy(
        tls=ReloadingContext(files) if (files := http_certificates(settings)) else None,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        max_connections=connection_capacity(),
        admit=allowlist.door,
        monitor_only=allowlist.monitor_only,
        refused=lambda reason: metrics.connections_refused.labels(reason).inc(),
    )


def parsers(metrics: Metrics | None = None) -> Parsers:
    """The ingress's parsers, by kind of body; with ``metrics``, the fields they adjust are counted and logged.
    (``quarantine replay`` uses them without: today's rules applied to bodies refused earlier.)"""
    readers: dict[str, Callable[[bytes], ParsedCallback | ParsedInbound]] = {
        STATUS: parse_callback,
        INBOUND: parse_inbound,
        SMS_STATUS: parse_sms,
        SMS_INBOUND: parse_sms_inbound,
    }
    if metrics is None:
        return {kind: _plain(read) for kind, read in readers.items()}
    return {kind: AdjustmentRecorder(read, metrics) for kind, read in readers.items()}


def _plain(read: Callable[[bytes], ParsedCallback | ParsedInbound]) -> ParseBody:
    return lambda body: job(read(body))


def tracking_api(settings: Settings, metrics: Metrics | None = None) -> TrackingApi | None:
    """A client of Routee's tracking API, when credentials are configured."""
    credentials = settings.routee_credentials()
    if credentials is None:
        return None
    return TrackingApi(
        credentials,
        api_url=settings.routee_api_url,
        auth_url=settings.routee_auth_url,
        rate=settings.reconcile_rate,
        observe=(lambda endpoint, outcome: metrics.tracking_calls.labels(endpoint, outcome).inc()) if metrics else None,
    )


def retention(settings: Settings) -> Retention:
    """How long the writer keeps each kind of data (every option in seconds)."""
    return Retention(
        events=settings.retention_hours * 3600,
        replies=None if settings.reply_retention_hours is None else settings.reply_retention_hours * 3600,
        campaigns=settings.campaign_retention_days * 86400,
        quarantine=settings.quarantine_days * 86400,
    )


def refusals(settings: Settings) -> Refusals:
    """How refused bodies are quarantined: with the HTTP status the ingress answers them, within the bound."""
    return Refusals(lambda error: int(http_status(error)), int(settings.quarantine_max_mb * 1024 * 1024))


async def _watch_quarantine(store: Store, metrics: Metrics, interval: float = 5.0) -> None:
    """Keep the quarantine gauges current (the command line changes the quarantine too)."""
    while True:
        with contextlib.suppress(RouteeCallbacksError):
            count, size = await store.quarantine_size()
            metrics.quarantined.set(count)
            metrics.quarantined_bytes.set(size)
        await asyncio.sleep(interval)


def connection_capacity(reserve: int = 512) -> int:
    """How many HTTP connections a worker takes: its open-files limit, less a reserve for gRPC and the store."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, soft - reserve) if soft != resource.RLIM_INFINITY else 1_000_000


def _reconciler(
    settings: Settings, instance: Instance, store: Store, log: LocalLog, api: TrackingApi, metrics: Metrics
) -> Reconciler:
    return Reconciler(
        store,
        log.writer,
        api,
        parse_tracked,
        after=settings.reconcile_after,
        state=ReconcileState(instance.reconcile_state),
        found=metrics.reconciled_events.inc,
        mismatched=metrics.tracking_mismatches.inc,
        idle=min(10.0, settings.reconcile_after),
    )


def run_writer(settings: Settings, instance: Instance) -> None:
    """The writer process: serve the workers until SIGTERM (or until the master is gone)."""
    uvloop.run(_writer_main(settings, instance))


async def _writer_main(settings: Settings, instance: Instance) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(WRITER_STOP_SIGNAL, stop.set)
    metrics = Metrics(multiprocess_dir=instance.metrics_dir)
    store = open_store(
        settings.database, synchronous=settings.sqlite_synchronous, personal_data=settings.store_personal_data
    )
    feed = Feed()
    # Answers and the feed leave right after each commit, not a loop iteration later.
    log = LocalLog(
        store,
        metrics.published(feed.broadcast),
        observe_commit=metrics.observe_commit,
        observe_failure=metrics.write_failures.inc,
        after_batch=feed.flush,
    )
    server = WriterServer(log.writer, refusals(settings), instance.writer_socket, feed)
    await log.start(retention=retention(settings))
    await server.start()
    gauges = asyncio.create_task(_watch_quarantine(store, metrics), name="quarantine-gauge")
    api = tracking_api(settings, metrics)
    reconciler = None
    if api is not None:
        reconciler = asyncio.create_task(
            _reconciler(settings, instance, store, log, api, metrics).run(), name="reconciler"
        )
    _LOGGER.info("writer started", extra={"pid": os.getpid(), "database": redact(settings.database)})
    while not stop.is_set() and os.getppid() == instance.master_pid:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    gauges.cancel()
    if reconciler is not None and api is not None:
        reconciler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reconciler
        await api.close()
    await server.stop()
    await log.stop()
    await store.close()
    _LOGGER.info("writer stopped", extra={"pid": os.getpid()})
