"""The HTTP connection layer under the Falcon app: uvicorn's httptools protocol, adapted.

What a connection may do, decided before the app sees a request:

- **Strangers are turned away at the door.** A peer that may not connect (not
  an allowed sender, a trusted proxy or a monitoring network) never reaches
  the app: it gets ``403`` as soon as it sends anything (its first bytes are
  read and dropped, so the close is clean and the answer arrives), and the
  connection is closed; a silent one is dropped after ``stranger_grace``.
  While more than ``stranger_budget`` strangers wait at once (an attack), a
  new one is dropped on the spot. So no number of strangers can hold the
  process's file descriptors.
- **Size limits.** A request's head (request line and headers) is at most
  ``MAX_HEAD_BYTES`` and ``MAX_HEADER_LINES`` lines, counted as its bytes
  arrive, before the parser buffers them: past either, ``431`` and the
  connection is closed.
- **Time limits.** A request's headers must arrive within ``header_timeout``
  of its first byte (or of the connection, for its first request), its body
  within ``body_timeout`` of its headers; otherwise ``408`` and the connection
  is closed. The limits are checked after each read, so a request that
  arrives whole needs no timer at all.
- **Capacity.** Past ``max_connections`` a new connection gets ``503`` and is
  closed; the connections already open are not disturbed.
- **TLS after the door.** With a certificate, a peer is admitted before any
  handshake and upgraded only then (the handshake within ``header_timeout``):
  a stranger, or a connection past capacity, is closed unanswered and costs
  no TLS work; plain HTTP to the port fails the handshake. The upgrade
  happens in ``connection_made`` itself, so not a byte of the client's hello
  can be read as plain data first (uvloop starts reading right after
  ``connection_made`` whatever it paused, which rules out ``loop.start_tls``
  from a task).
- **One write per response.** uvicorn writes a response's head and body with
  two system calls; a coalescing transport sends them as one.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio.sslproto import SSLProtocol
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from http_ingress.errors import PROBLEM_JSON, problem
from service.config.tls import ReloadingContext
from service.domain.limits import MAX_HEAD_BYTES, MAX_HEADER_LINES

_LOGGER = logging.getLogger(__name__)


def _admit_everyone(peer: str) -> str | None:
    return None


def _ignore(reason: str) -> None:
    pass


@dataclass(frozen=True)
class ConnectionPolicy:
    """What every HTTP connection of a worker is held to."""

    header_timeout: float = 10.0
    body_timeout: float = 10.0
    max_connections: int = 10_000
    stranger_grace: float = 1.0
    stranger_budget: int = 64
    #: Serve HTTPS: admitted peers are upgraded to TLS (within header_timeout); strangers never get a handshake.
    tls: ReloadingContext | None = None
    #: Whether a peer address may open a connection at all: None when it may, else the reason it may not
    #: (``source_not_allowed``: 403 at the door; ``allowlist_unavailable``: 503 at the door).
    admit: Callable[[str], str | None] = _admit_everyone
    #: Told the reason of every connection refused or cut off (for metrics).
    refused: Callable[[str], None] = _ignore
    #: Whether an admitted peer may only read monitoring pages (it may not send a body).
    monitor_only: Callable[[str], bool] = lambda peer: False


def connection_class(policy: ConnectionPolicy) -> type[Connection]:
    """A ``Connection`` class held to ``policy`` (uvicorn builds protocols from a class)."""
    return type("Connection", (Connection,), {"policy": policy})


class CoalescingTransport:
    """A transport that joins a held first write with the next one (a response's head with its body).

    Whatever is still held at the end of the loop iteration is written then, so nothing waits longer.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hold the first write; send it together with the second."""
        if self._held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            held, self._held = self._held, None
            self._transport.write(held + bytes(data))

    def flush(self) -> None:
        """Send what is held."""
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held)

    def close(self) -> None:
        """Send what is held, then close."""
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        """Close at once, dropping what is held."""
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class Connection(HttpToolsProtocol):
    """uvicorn's httptools protocol held to a ConnectionPolicy."""

    policy: ClassVar[ConnectionPolicy] = ConnectionPolicy()
    #: Strangers of this worker waiting to be answered (shared by the worker's connections).
    waiting_strangers: ClassVar[int] = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn formats an access line for every response when its logger has a handler, even when the level
        # then drops it (≈ 2 % of the worker's time under load): only when it would be written.
        self.access_log = self.access_log and self.access_logger.isEnabledFor(logging.INFO)
        self._headers_done = False
        self._in_request = False
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_kind = ""
        self._stranger: asyncio.Transport | None = None
        self._stranger_reason = ""
        self._upgrading = False
        # A monitoring peer's request head as it arrives (bounded by the head's limit): it may only read.
        self._monitor_head: bytes | None = None
        # The head of the request being received: its bytes and lines so far, the last bytes of the previous read
        # (its end may straddle two reads); None once the head is complete, until the next request.
        self._head: tuple[int, int, bytes] | None = (0, 0, b"")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Turn away strangers and connections past capacity; start the clock for the first request's headers."""
        if self._upgrading:  # Called again by the TLS layer, its handshake done.
            self._upgrading = False
            self._serve(transport)
            return
        tls = self.policy.tls
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else ""
        if (refusal := self.policy.admit(host)) is not None:
            self.policy.refused(refusal)
            if tls is not None or type(self).waiting_strangers >= self.policy.stranger_budget:
                transport.abort()  # No answer a TLS client could read, or too many at once: no descriptor held.
                return
            type(self).waiting_strangers += 1
            self._stranger = transport
            self._stranger_reason = refusal
            self._deadline = self.loop.call_later(self.policy.stranger_grace, self._drop_stranger)
            return
        self._monitor_head = b"" if self.policy.monitor_only(host) else None
        if len(self.server_state.connections) >= self.policy.max_connections:
            self.policy.refused("over_capacity")
            if tls is not None:
                transport.abort()
                return
            _write_problem(transport, HTTPStatus.SERVICE_UNAVAILABLE, "over_capacity", "too many connections; retry")
            transport.close()
            return
        if tls is not None:
            self._start_tls(transport, tls)
            return
        self._serve(transport)

    def _start_tls(self, transport: asyncio.Transport, tls: ReloadingContext) -> None:
        """Put TLS under this protocol now; it calls ``connection_made`` again once the handshake is done."""
        tls.refresh()  # A certificate renewed on disk is served from this handshake on.
        handshake: asyncio.Future[None] = self.loop.create_future()
        handshake.add_done_callback(self._handshake_done)
        layer = SSLProtocol(
            self.loop,
            self,
            tls.context,
            handshake,
            server_side=True,
            ssl_handshake_timeout=self.policy.header_timeout,  # type: ignore[arg-type]  # typeshed: int; floats work
            ssl_shutdown_timeout=self.policy.header_timeout,
        )
        self._upgrading = True
        transport.set_protocol(layer)
        layer.connection_made(transport)

    def _handshake_done(self, handshake: asyncio.Future[None]) -> None:
        if handshake.cancelled() or handshake.exception() is not None:  # Plain HTTP, a probe, too slow, gone.
            self.policy.refused("tls_handshake")

    def _serve(self, transport: asyncio.Transport) -> None:
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._arm("header", self.policy.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the clock."""
        self._disarm()
        if self._stranger is not None:
            self._stranger = None
            type(self).waiting_strangers -= 1
        elif self.transport is not None:  # None: refused before uvicorn saw it.
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse, then set the clock for what the request still owes."""
        if self._stranger is not None:
            self._disarm()
            peer = self._stranger.get_extra_info("peername")
            host = peer[0] if isinstance(peer, tuple) else "?"
            if self._stranger_reason == "allowlist_unavailable":
                _write_problem(
                    self._stranger,
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    "allowlist_unavailable",
                    "the allowlist of callback senders is not resolved yet; retry later",
                )
            else:
                _write_problem(
                    self._stranger,
                    HTTPStatus.FORBIDDEN,
                    "source_not_allowed",
                    f"{host} is not an allowed callback sender",
                )
            self._stranger.close()
            return
        if (head := self._head) is not None:
            if not self._head_fits(head, data):
                self._refuse(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "header_too_large",
                    f"a request head is at most {MAX_HEAD_BYTES} bytes and {MAX_HEADER_LINES} header lines",
                )
                return
            if self._monitor_head is not None and not self._monitor_reads_only(data):
                self._refuse(  # As any peer that may not post: a monitoring network may only read.
                    HTTPStatus.FORBIDDEN,
                    "source_not_allowed",
                    "a monitoring network is not an allowed callback sender: it may read (GET or HEAD, no body)",
                )
                return
        super().data_received(data)
        if not self._in_request or self.transport.is_closing():
            self._disarm()
        elif not self._headers_done:
            self._arm("header", self.policy.header_timeout)
        else:
            self._arm("body", self.policy.body_timeout)

    def on_message_begin(self) -> None:
        """A request starts."""
        self._in_request, self._headers_done = True, False
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        """Its headers are all there."""
        self._headers_done = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """Its body is all there."""
        self._in_request = False
        self._head = (0, 0, b"")  # What comes next is the head of the next request.
        super().on_message_complete()

    def _refuse(self, status: HTTPStatus, reason: str, detail: str) -> None:
        """Answer before the parser has seen the request, and close."""
        self.policy.refused(reason)
        _write_problem(self.transport, status, reason, detail)
        self._disarm()
        self.transport.close()

    def _monitor_reads_only(self, data: bytes) -> bool:
        """Whether a monitoring peer's request, as far as its head has come, only reads (GET or HEAD, no body)."""
        assert self._monitor_head is not None
        self._monitor_head += data
        if self._head is not None:  # The head goes on in the next read.
            return True
        head, self._monitor_head = self._monitor_head.partition(b"\n\r\n")[0].partition(b"\n\n")[0], b""
        lines = head.lstrip(b"\r\n").split(b"\n")
        if lines[0].split(b" ", 1)[0] not in (b"GET", b"HEAD"):
            return False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
                return False
        return True

    def _head_fits(self, head: tuple[int, int, bytes], data: bytes) -> bool:
        """Count what ``data`` adds to the head being received; tell whether the head is still within bounds."""
        size, lines, tail = head
        window = tail + data
        end = min(
            (found + len(mark) for mark in (b"\r\n\r\n", b"\n\n") if (found := window.find(mark)) >= 0), default=-1
        )
        part = window[len(tail) : end] if end >= 0 else data
        size, lines = size + len(part), lines + part.count(b"\n")
        if size > MAX_HEAD_BYTES or lines > MAX_HEADER_LINES + 2:  # + the request line and the empty line
            return False
        self._head = None if end >= 0 else (size, lines, window[-3:])
        return True

    def _arm(self, kind: str, seconds: float) -> None:
        if self._deadline is not None and self._deadline_kind == kind:
            return  # Already counting: the limit runs from the start of the part, not from the last byte.
        self._disarm()
        self._deadline_kind = kind
        self._deadline = self.loop.call_later(seconds, self._expire, kind, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
            self._deadline_kind = ""

    def _expire(self, kind: str, seconds: float) -> None:
        self._deadline = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:
            return  # The app is answering already; uvicorn's own timers apply.
        reason = f"{kind}_timeout"
        if self.cycle is not None and kind == "body":
            # The app is reading the body: it sees it end short and counts the timeout; it must not answer.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        else:
            self.policy.refused(reason)
        _write_problem(
            self.transport, HTTPStatus.REQUEST_TIMEOUT, reason, f"the {kind} did not arrive within {seconds:g} s"
        )
        self.transport.close()

    def _drop_stranger(self) -> None:
        self._deadline = None
        if self._stranger is not None:
            self._stranger.abort()


def _write_problem(transport: Any, status: HTTPStatus, reason: str, detail: str) -> None:
    body = problem(status, detail, reason=reason).encode()
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: {PROBLEM_JSON}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    transport.write(head + body)
