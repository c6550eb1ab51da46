"""The Falcon ASGI app of the ingress, built from its collaborators."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import falcon.asgi

from http_ingress import errors
from http_ingress.allowlist import Allowlist
from http_ingress.openapi import OpenApiResource
from http_ingress.readiness import Readiness
from http_ingress.resources import CallbacksResource, HealthResource, MetricsResource, ReadyResource
from service.domain.errors import RouteeCallbacksError
from service.domain.rules import INBOUND, SMS_INBOUND, SMS_STATUS
from service.log.ingest import Ingest
from service.monitoring.metrics import Metrics

CALLBACKS_PATH = "/v1/callbacks/viber"
INBOUND_PATH = "/v1/callbacks/viber/inbound"
SMS_PATH = "/v1/callbacks/sms"
SMS_INBOUND_PATH = "/v1/callbacks/sms/inbound"
#: Pages for the monitoring networks only (--monitor-cidr): probes, metrics, the API description.
MONITORING_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})


class MonitoringOnly:
    """Refuses the monitoring pages (403) to every client outside the monitoring networks, judged by the address
    after ``X-Forwarded-For`` from trusted proxies: behind a load balancer, the balancer speaks for others."""

    def __init__(self, allowlist: Allowlist) -> None:
        self._allowlist = allowlist

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Check the client of a monitoring page."""
        if req.path in MONITORING_PATHS:
            self._allowlist.check_monitor(req.remote_addr, req.get_header("X-Forwarded-For"))


def create_app(
    ingest: Ingest,
    allowlist: Allowlist,
    metrics: Metrics,
    *,
    middleware: Any = (),
    readiness: Readiness | None = None,
    reconcile: Callable[[], dict[str, str] | None] | None = None,
) -> falcon.asgi.App[Any, Any]:
    """Build the ingress app; it starts nothing and reads no environment. ``readiness`` is what /readyz checks
    (by default the ingest's store and the allowlist); ``reconcile`` tells it what reconciliation is doing (when
    it is configured)."""
    app = falcon.asgi.App(middleware=[MonitoringOnly(allowlist), *middleware])
    app.add_route(CALLBACKS_PATH, CallbacksResource(ingest, allowlist, metrics))
    app.add_route(INBOUND_PATH, CallbacksResource(ingest, allowlist, metrics, kind=INBOUND))
    app.add_route(SMS_PATH, CallbacksResource(ingest, allowlist, metrics, kind=SMS_STATUS))
    app.add_route(SMS_INBOUND_PATH, CallbacksResource(ingest, allowlist, metrics, kind=SMS_INBOUND))
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(readiness or Readiness(ingest, allowlist), reconcile=reconcile))
    app.add_route("/metrics", MetricsResource(metrics))
    app.add_route("/openapi.json", OpenApiResource())
    app.add_error_handler(Exception, errors.handle_unexpected)
    app.add_error_handler(RouteeCallbacksError, errors.handle_error)
    app.set_error_serializer(errors.serialize_http_error)
    return app
