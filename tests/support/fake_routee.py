"""A fake of Routee's OAuth server and Viber and SMS tracking API: a real HTTP server on loopback speaking the
documented shapes (client-credentials tokens, a message's current status, a campaign page by page), with the faults
a client must survive: tokens that stop working, 404, 429 with Retry-After, 5xx."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

APPLICATION_ID = "routee-app-1"
SECRET = "s3cret-never-logged"


def tracking_object(
    tracking_id: str, status: str, date: str, *, campaign: str | None = None, ttl: int = 86400
) -> dict[str, Any]:
    """A message as the tracking API describes it (``status.status``/``status.date``, not a callback's names)."""
    item: dict[str, Any] = {
        "trackingId": tracking_id,
        "to": "+306900000001",
        "from": "Routee",
        "country": "GR",
        "status": {"status": status, "date": date},
        "applicationName": "default",
        "originatingService": "Viber",
        "direction": "Outbound",
        "ttl": ttl,
        "message": "Spring sale: 20% off today",
        "price": 0.0123,
        "expireOnDelivery": False,
    }
    if status.lower() == "failed":
        item["status"]["reason"] = {"detailedStatus": "Not Viber User", "description": "Not a Viber user"}
    if campaign is not None:
        item.update(campaign="Spring sale", campaignTrackingId=campaign)
    return item


def sms_tracking_object(
    message_id: str, part: int, parts: int, status: str, date: str, *, campaign: str | None = None
) -> dict[str, Any]:
    """One part of an SMS as the SMS tracking API describes it (``status.status``/``status.date``, ``body``)."""
    item: dict[str, Any] = {
        "messageId": message_id,
        "smsId": f"{message_id}-p{part}",
        "part": part,
        "parts": parts,
        "to": "+306900000101",
        "from": "Routee",
        "country": "GR",
        "operator": "Cosmote",
        "status": {"status": status, "date": date},
        "applicationName": "default",
        "originatingService": "Sms",
        "direction": "Outbound",
        "body": "Spring sale: 20% off today",
        "price": 0.035,
    }
    if status.lower() == "undelivered":
        item["status"]["reason"] = {"detailedStatus": "Undelivered on Handset", "description": "Not accepted"}
    if campaign is not None:
        item.update(campaign="Spring sale", campaignTrackingId=campaign)
    return item


@dataclass
class FakeRoutee:
    """The fake's state; tests change it while the server runs."""

    application_id: str = APPLICATION_ID
    secret: str = SECRET
    token_lifetime: int = 3600
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    campaigns: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: An SMS's parts by message id, and an SMS campaign's parts, as the SMS tracking API answers them.
    sms_messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    sms_campaigns: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: Statuses to answer the next tracking calls with, first come first served (429 gets Retry-After: 0).
    faults: list[int] = field(default_factory=list)
    #: Every Authorization header the token endpoint got.
    token_requests: list[str] = field(default_factory=list)
    #: Every tracking call: (path, the token it carried).
    calls: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0
    _tokens: set[str] = field(default_factory=set)
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The base URL of both the API and the OAuth server."""
        return f"http://127.0.0.1:{self.port}"

    def revoke_tokens(self) -> None:
        """Make every token issued so far stop working (as if it had expired early)."""
        with self._lock:
            self._tokens.clear()

    def token(self, authorization: str, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.token_requests.append(authorization)
            expected = base64.b64encode(f"{self.application_id}:{self.secret}".encode()).decode()
            if authorization != f"Basic {expected}" or form.get("grant_type") != ["client_credentials"]:
                return 401, {"error": "invalid_client"}
            token = f"token-{next(self._numbers)}"
            self._tokens.add(token)
            return 200, {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": self.token_lifetime,
                "scope": "viber_tracking",
            }

    def tracking(self, path: str, query: dict[str, list[str]], authorization: str) -> tuple[int, Any]:
        with self._lock:
            token = authorization.removeprefix("Bearer ")
            self.calls.append((path, token))
            if token not in self._tokens:
                return 401, {"message": "Unauthorized"}
            if self.faults:
                return self.faults.pop(0), {"message": "try later"}
            if path.startswith("/sms/tracking/single/"):
                parts = self.sms_messages.get(path.rsplit("/", 1)[1])
                return (200, parts) if parts else (404, {"code": "404005000", "developerMessage": "Tracking not found"})
            if path.startswith(("/viber/tracking/campaign/", "/sms/tracking/campaign/")):
                campaigns = self.sms_campaigns if path.startswith("/sms/") else self.campaigns
                items = campaigns.get(path.rsplit("/", 1)[1])
                if items is None:
                    return 404, {"message": "campaign not found"}
                page, size = int(query.get("page", ["0"])[0]), int(query.get("size", ["20"])[0])
                pages = max(1, -(-len(items) // size))
                return 200, {
                    "content": items[page * size : (page + 1) * size],
                    "totalPages": pages,
                    "totalElements": len(items),
                    "number": page,
                    "size": size,
                    "first": page == 0,
                    "last": page >= pages - 1,
                }
            item = self.messages.get(path.rsplit("/", 1)[1])
            return (200, item) if item is not None else (404, {"message": "not found"})


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        form = parse_qs(self.rfile.read(length).decode())
        if urlsplit(self.path).path != "/oauth/token":
            self._answer(404, {})
            return
        self._answer(*self.server.fake.token(self.headers.get("Authorization", ""), form))

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if not parts.path.startswith(("/viber/tracking/", "/sms/tracking/")):
            self._answer(404, {})
            return
        self._answer(
            *self.server.fake.tracking(parts.path, parse_qs(parts.query), self.headers.get("Authorization", ""))
        )

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeRoutee) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


@contextlib.contextmanager
def fake_routee(**settings: Any) -> Iterator[FakeRoutee]:
    """Run a FakeRoutee on a free loopback port until the block ends."""
    fake = FakeRoutee(**settings)
    server = _Server(fake)
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
