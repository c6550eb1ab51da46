"""The gRPC server: MessageStatusService, health and reflection on one grpc.aio server."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.api.servicer import SERVICE_NAME, MessageStatusServicer, method_handlers
from service.config.values import HostPort
from service.domain.errors import StartupError
from service.domain.limits import MAX_GRPC_REQUEST_BYTES

# Chosen, not inherited: see the README's "Keepalive" section.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_GRPC_REQUEST_BYTES),
    # The server pings idle connections so dead peers and silent proxies are noticed.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Clients may ping every 10 s at most; more often earns a GOAWAY after two strikes.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
)


def create_server(
    bind: HostPort,
    servicer: MessageStatusServicer,
    health_servicer: Any,
    *,
    max_streams: int,
    reuse_port: bool = False,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Build the gRPC server and bind it (port 0 picks a free port); return it with its port. It is not started.

    ``reuse_port`` lets the workers of one instance share the port (the kernel spreads connections over them);
    the process model holds a lock that keeps a second instance off it. Without it, a second bind fails.
    """
    # gRPC core cancels calls that wait to be picked up when more than 1 000 (soft) / 3 000 (hard) are pending:
    # after a restart, thousands of subscribers reconnecting at once would get CANCELLED. Allow a full reconnect.
    pending = (
        ("grpc.server.max_pending_requests", max_streams + 1000),
        ("grpc.server.max_pending_requests_hard_limit", 2 * max_streams + 3000),
    )
    server = grpc.aio.server(options=(*SERVER_OPTIONS, *pending, ("grpc.so_reuseport", int(reuse_port))))
    server.add_generic_rpc_handlers((method_handlers(servicer),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    try:
        port = (
            server.add_insecure_port(str(bind))
            if credentials is None
            else server.add_secure_port(str(bind), credentials)
        )
    except RuntimeError as ex:
        raise StartupError(f"cannot listen for gRPC on {bind}: {ex}") from None
    if port == 0:
        raise StartupError(f"cannot listen for gRPC on {bind}")
    return server, port
