"""Falcon resources of the ingress: the callback endpoints (status callbacks, inbound messages), probes and
metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import falcon
import falcon.asgi
from prometheus_client import CONTENT_TYPE_LATEST

from http_ingress.allowlist import Allowlist
from http_ingress.readiness import Readiness
from service.domain.errors import (
    BodyTimeoutError,
    PayloadTooLargeError,
    RejectedError,
    RouteeCallbacksError,
    UnsupportedMediaError,
)
from service.domain.limits import MAX_BODY_BYTES
from service.domain.rules import INBOUND_KINDS, SMS_INBOUND, SMS_STATUS, STATUS
from service.log.ingest import Ingest
from service.monitoring.metrics import Metrics

_LOGGER = logging.getLogger(__name__)

REJECTION_LOG_INTERVAL = 60.0
JSON = "application/json"
_DUPLICATE = b'{"status": "duplicate"}'


def _is_json(content_type: str | None) -> bool:
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() == JSON


class CallbacksResource:
    """``POST /v1/callbacks/viber`` (``kind`` STATUS), ``/v1/callbacks/viber/inbound`` (INBOUND),
    ``/v1/callbacks/sms`` (SMS_STATUS) or ``/v1/callbacks/sms/inbound`` (SMS_INBOUND): keep one body Routee posted,
    then answer 200."""

    def __init__(
        self,
        ingest: Ingest,
        allowlist: Allowlist,
        metrics: Metrics,
        *,
        kind: str = STATUS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ingest = ingest
        self._kind = kind
        self._inbound = kind in INBOUND_KINDS
        self._channel = "sms" if kind in (SMS_STATUS, SMS_INBOUND) else "viber"
        self._counter = metrics.inbound_messages if self._inbound else metrics.callbacks
        self._allowlist = allowlist
        self._metrics = metrics
        self._clock = clock
        self._next_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Check the sender, validate, store durably, answer."""
        started = time.perf_counter()
        try:
            sender = self._allowlist.sender(req.remote_addr, req.get_header("X-Forwarded-For"))
            body = await self._read(req)
            if (refused := _refusal(req, body)) is not None:
                # From an allowed sender, so possibly Routee: kept for an operator before it is refused.
                await self._ingest.refuse(self._kind, body[:MAX_BODY_BYTES], sender, refused)
                raise refused
            kept = await self._ingest.keep(self._kind, body, sender)
        except RejectedError as ex:
            self._counter.labels("rejected", ex.reason, self._channel).inc()
            self._log_rejection(ex, req.remote_addr)
            raise
        except RouteeCallbacksError as ex:
            self._counter.labels("unavailable", ex.reason, self._channel).inc()
            raise
        if _LOGGER.isEnabledFor(logging.DEBUG):
            _LOGGER.debug(f"{self._kind} kept", extra={"tracking_id": kept.tracking_id, "sequence": kept.sequence})
        if kept.sequence is None:
            resp.data = _DUPLICATE
        else:
            resp.data = b'{"status": "accepted", "sequence": %d}' % kept.sequence
        if not self._inbound:  # The hot path: counted in bulk.
            self._metrics.callback_kept(kept.sequence is None, time.perf_counter() - started, self._channel)
        else:
            self._metrics.inbound_kept(kept.sequence is None, self._channel)
        resp.content_type = JSON

    def _log_rejection(self, error: RejectedError, peer: str) -> None:
        # One line per reason and minute at most: strangers must not flood the log.
        now = self._clock()
        if now < self._next_log.get(error.reason, 0.0):
            self._suppressed[error.reason] = self._suppressed.get(error.reason, 0) + 1
            return
        self._next_log[error.reason] = now + REJECTION_LOG_INTERVAL
        _LOGGER.warning(
            "%s rejected: %s",
            "inbound message" if self._inbound else "callback",
            error,
            extra={"reason": error.reason, "peer": peer, "similar_not_logged": self._suppressed.pop(error.reason, 0)},
        )

    async def _read(self, req: falcon.asgi.Request) -> bytes:
        """The body, up to one byte more than the limit (the rest of a longer one is never read)."""
        # The connection layer (http_ingress.connections) times the body; a body it cut off ends short here.
        body: bytes = await req.stream.read(MAX_BODY_BYTES + 1)
        if req.content_length is not None and len(body) < min(req.content_length, MAX_BODY_BYTES + 1):
            raise BodyTimeoutError("the body did not arrive in time; the connection was closed")
        return body


def _refusal(req: falcon.asgi.Request, body: bytes) -> RejectedError | None:
    """Why a body from an allowed sender cannot even be parsed as a callback, if it cannot."""
    if not _is_json(req.content_type):
        return UnsupportedMediaError(f"Content-Type must be {JSON}, got {req.content_type or 'none'}")
    if len(body) > MAX_BODY_BYTES:
        return PayloadTooLargeError(f"the body is longer than {MAX_BODY_BYTES} bytes")
    return None


class HealthResource:
    """``GET /healthz``: the process is alive and serving HTTP."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Answer 200."""
        resp.media = {"status": "ok"}


class ReadyResource:
    """``GET /readyz``: the store is writable and the DNS allowlist (when on) is fresh. What reconciliation is
    doing is reported too, but never fails readiness: callbacks work without it."""

    def __init__(self, readiness: Readiness, *, reconcile: Callable[[], dict[str, str] | None] | None = None) -> None:
        self._readiness = readiness
        self._reconcile = reconcile

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Answer 200 when ready, 503 otherwise; the body says which check fails."""
        checks = await self._readiness.checks()
        ready = all(check["ready"] for check in checks.values())
        if self._reconcile is not None:
            checks["reconcile"] = {"ready": True, **(self._reconcile() or {"state": "starting"})}
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {"ready": ready, "checks": checks}


class MetricsResource:
    """``GET /metrics``: Prometheus text format."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Render every metric."""
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = self._metrics.render()
