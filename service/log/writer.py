"""The writer process's side of the private socket: keeps what workers send, and feeds them the log.

Workers validate what Routee posts and send it as protobuf (``writer_client.RemoteIngest``):
parsing is most of the per-callback work, and this process's one event loop
is the instance's bottleneck (measured; docs/benchmarks.md). Each submission
joins the next group commit; its answer goes back once the transaction is durable. Every committed entry is
pushed to every connected worker, in sequence order. A worker that does not
read its feed is disconnected rather than allowed to grow this process's
memory: it reconnects and reads what it missed from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.entries import Entry
from service.domain.errors import RejectedError, RouteeCallbacksError
from service.domain.rules import BODY_KINDS, INBOUND, SMS_STATUS, STATUS
from service.log import ipc
from service.log.batch_writer import BatchWriter
from service.log.ingest import Append, Refusals
from service.store import AppendInbound, AppendStatus, Probe

_LOGGER = logging.getLogger("service.writer_server")

#: A worker whose unread feed grows past this is cut off (it catches up from the store when it reconnects).
MAX_UNSENT_BYTES = 64 * 1024 * 1024


class Feed:
    """The workers connected now, to whom every committed entry is pushed."""

    def __init__(self) -> None:
        self.connections: set[_WorkerConnection] = set()

    def broadcast(self, entries: Sequence[Entry]) -> None:
        """Push committed entries to every worker."""
        if self.connections:
            data = ipc.feed(entries)
            for connection in list(self.connections):
                connection.send(data)

    def flush(self) -> None:
        """Write out what every connection has to send, now."""
        for connection in list(self.connections):
            connection.flush()


class WriterServer:
    """Serves the workers of one instance on a Unix socket."""

    def __init__(self, writer: BatchWriter, refusals: Refusals, path: Path, feed: Feed) -> None:
        self._writer = writer
        self._refusals = refusals
        self._path = path
        self._server: asyncio.AbstractServer | None = None
        self.feed = feed

    async def start(self) -> None:
        """Listen on the socket path (replacing a stale socket file)."""
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: _WorkerConnection(self), str(self._path)
        )

    async def stop(self) -> None:
        """Stop accepting and close every worker connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for connection in list(self.feed.connections):
            connection.close()

    def handle(self, connection: _WorkerConnection, kind: int, payload: memoryview) -> None:
        """Act on one frame from a worker."""
        if kind in _SUBMISSIONS:
            body_kind = _SUBMISSIONS[kind]
            request_id, body = ipc.parse_request(payload)
            job = _append(body_kind, body)
            self._writer.enqueue_with(job, lambda entry, error: _answer(connection, request_id, entry, error))
        elif kind == ipc.REFUSE:
            request_id, peer, refused, body, body_kind = ipc.parse_refusal(payload)
            if not isinstance(refused, RejectedError) or body_kind not in BODY_KINDS:
                raise ipc.FrameError(f"a refusal must name a rejection and a kind, not {refused.reason} {body_kind}")
            self._keep_refused(connection, request_id, body_kind, body, peer, refused)
        elif kind == ipc.PROBE:
            request_id = ipc.parse_request(payload)[0]
            self._writer.enqueue_with(Probe(), lambda result, error: _answer(connection, request_id, None, error))
        else:
            raise ipc.FrameError(f"unknown frame kind {kind}")

    def _keep_refused(
        self, connection: _WorkerConnection, request_id: int, kind: str, body: bytes, peer: str, refused: RejectedError
    ) -> None:
        """Quarantine the body, then answer the refusal; if it cannot be kept, answer why (503: Routee retries)."""
        self._writer.enqueue_with(
            self._refusals.job(kind, body, peer, refused),
            lambda result, error: connection.send(ipc.failed(request_id, refused if error is None else error)),
        )


#: What each submission frame carries.
_SUBMISSIONS = {ipc.SUBMIT_STATUS: STATUS, ipc.SUBMIT_SMS: SMS_STATUS, ipc.SUBMIT_INBOUND: INBOUND}


def _append(kind: str, body: bytes) -> Append:
    """The job that stores what a worker validated and sent as protobuf."""
    try:
        if kind == STATUS:
            return AppendStatus(pb.ViberCallback.FromString(body))
        if kind == SMS_STATUS:
            return AppendStatus(pb.SmsCallback.FromString(body))
        return AppendInbound(pb.InboundMessage.FromString(body))
    except DecodeError as ex:
        raise ipc.FrameError(f"a {kind} submission is not its protobuf: {ex}") from None


def _answer(connection: _WorkerConnection, request_id: int, entry: Any, error: RouteeCallbacksError | None) -> None:
    if error is None:
        connection.send(ipc.kept(request_id, getattr(entry, "sequence", None)))
    else:
        connection.send(ipc.failed(request_id, error))


class _WorkerConnection(ipc.FramedProtocol):
    """One worker's connection: frames in, answers and feed out (one socket write per batch or loop iteration)."""

    peer = "a worker"

    def __init__(self, server: WriterServer) -> None:
        super().__init__()
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._server.feed.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.feed.connections.discard(self)
        super().connection_lost(exc)

    def received(self, kind: int, payload: memoryview) -> None:
        self._server.handle(self, kind, payload)

    def flush(self) -> None:
        super().flush()
        if self.transport is not None and self.transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            _LOGGER.warning("a worker does not read its feed; disconnecting it")
            self.transport.abort()
