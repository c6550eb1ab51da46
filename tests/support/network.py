"""Free ports, and HTTP from chosen source addresses."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any

CALLBACKS_PATH = "/v1/callbacks/viber"
SMS_PATH = "/v1/callbacks/sms"
SMS_INBOUND_PATH = "/v1/callbacks/sms/inbound"
JSON = "application/json"
INBOUND_PATH = "/v1/callbacks/viber/inbound"


# serve options for tests that are not about the allowlist: no DNS, every loopback address may post.
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class HttpResult:
    """An HTTP answer."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body, parsed as JSON."""
        return json.loads(self.body)


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    source: str | None = None,
    host: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    context: ssl.SSLContext | None = None,
) -> HttpResult:
    """Send one request, from the ``source`` address when given; over TLS with ``context``."""
    source_address = (source, 0) if source else None
    connection = (
        http.client.HTTPConnection(host, port, timeout=timeout, source_address=source_address)
        if context is None
        else http.client.HTTPSConnection(host, port, timeout=timeout, source_address=source_address, context=context)
    )
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return HttpResult(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def post_callback(
    port: int,
    body: bytes,
    *,
    path: str = CALLBACKS_PATH,
    source: str = "127.0.0.1",
    host: str = "127.0.0.1",
    **headers: str,
) -> HttpResult:
    """POST a body as Routee does, to ``path`` (the Viber callback URL by default), from ``source`` to ``host``;
    header names use ``_`` for ``-``."""
    all_headers = {"Content-Type": JSON, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return http_request(port, "POST", path, body, source=source, host=host, headers=all_headers)
