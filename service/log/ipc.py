"""The frames workers and the writer process exchange over their private Unix socket.

A frame is a 4-byte big-endian length, a 1-byte kind and the payload. Workers
send what they validated (its protobuf), bodies they refused, and probes; the writer answers each with a result carrying
the same request id, and pushes the log as it is committed (``FEED``): every
stored entry (status event or inbound message), field by field. A worker builds an event's stream item only
when one of its streams receives it.

Only processes of one service instance speak this, through a socket in a
directory only its user can enter; still, nothing here is ``pickle``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import Iterator, Sequence
from typing import cast

from service.domain.entries import Entry, StoredEvent, StoredInbound
from service.domain.errors import RouteeCallbacksError, error_from_reason
from service.domain.rules import STATUS

# Worker to writer.
SUBMIT_STATUS = 1
PROBE = 2
REFUSE = 3
SUBMIT_INBOUND = 4
SUBMIT_SMS = 5
# Writer to worker.
KEPT = 10
FAILED = 11
FEED = 12

_HEADER = struct.Struct("!IB")
_REQUEST = struct.Struct("!I")
_KEPT = struct.Struct("!IQ")
# A feed entry starts with its kind.
_EVENT_ENTRY = 1
_INBOUND_ENTRY = 2
_EVENT = struct.Struct("!BQBBBBBHBqqHHHI")
_INBOUND = struct.Struct("!BQqBHHI")
_RANGE = struct.Struct("!QQ")
#: The largest frame either side accepts: a 64 KiB body, or a feed page.
MAX_FRAME = 64 * 1024 * 1024

_LOGGER = logging.getLogger("service.ipc")


class FrameError(RouteeCallbacksError):
    """A peer sent a frame this side cannot read."""


def frame(kind: int, payload: bytes) -> bytes:
    """Encode one frame."""
    return _HEADER.pack(len(payload), kind) + payload


def frames(buffer: bytearray) -> Iterator[tuple[int, memoryview]]:
    """Yield every complete frame at the start of ``buffer`` as (kind, payload), then drop them from it.

    The payloads are views into a copy of the consumed bytes, valid after the buffer changes.
    """
    end = 0
    complete: list[tuple[int, int, int]] = []
    while len(buffer) - end >= _HEADER.size:
        length, kind = _HEADER.unpack_from(buffer, end)
        if length > MAX_FRAME:
            raise FrameError(f"frame of {length} bytes is over the limit")
        if len(buffer) - end - _HEADER.size < length:
            break
        complete.append((kind, end + _HEADER.size, length))
        end += _HEADER.size + length
    if not end:
        return
    consumed = memoryview(bytes(buffer[:end]))
    del buffer[:end]
    for kind, start, length in complete:
        yield kind, consumed[start : start + length]


class FramedProtocol(asyncio.Protocol):
    """One end of the private socket. Frames in go to ``received`` one by one; an unreadable one closes the
    connection. Frames out are gathered and leave in one write at the end of the loop iteration (or at
    ``flush``): one system call, and one wake-up of the other side, for many (measured: a worker's requests
    sent this way took a fifth off the writer process's CPU, ingress +3-9 %)."""

    #: Who is at the other end, for the log.
    peer = "the other side"

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._unsent: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            for kind, payload in frames(self._buffer):
                self.received(kind, payload)
        except FrameError as ex:
            _LOGGER.error("%s sent an unreadable frame; disconnecting: %s", self.peer, ex)
            self.close()

    def received(self, kind: int, payload: memoryview) -> None:
        """Act on one frame; raise FrameError when it cannot be read."""
        raise NotImplementedError

    def send(self, data: bytes) -> None:
        """Queue a frame; it leaves at the end of this loop iteration, or at ``flush``."""
        if self.transport is None:
            return
        if not self._unsent:
            asyncio.get_running_loop().call_soon(self.flush)
        self._unsent.append(data)

    def flush(self) -> None:
        """Write what is queued now."""
        if self.transport is not None and self._unsent:
            self.transport.write(b"".join(self._unsent))
        self._unsent.clear()

    def close(self) -> None:
        """Close the connection."""
        if self.transport is not None:
            self.transport.close()


def request(kind: int, request_id: int, body: bytes = b"") -> bytes:
    """A worker's request: its id, then the body (a validated body's protobuf; empty for a probe)."""
    return frame(kind, _REQUEST.pack(request_id) + body)


def parse_request(payload: memoryview) -> tuple[int, bytes]:
    """Split a request into its id and body."""
    return _REQUEST.unpack_from(payload)[0], bytes(payload[_REQUEST.size :])


def refusal(request_id: int, peer: str, error: RouteeCallbacksError, body: bytes, kind: str = STATUS) -> bytes:
    """A worker's request to keep a body it refused, with why and what it was posted as."""
    header = json.dumps({"peer": peer, "kind": kind, **_wire(error)}).encode()
    return frame(REFUSE, _REQUEST.pack(request_id) + struct.pack("!I", len(header)) + header + body)


def parse_refusal(payload: memoryview) -> tuple[int, str, RouteeCallbacksError, bytes, str]:
    """Read a refusal: request id, sender, the error, the body, what it was posted as."""
    request_id = _REQUEST.unpack_from(payload)[0]
    (length,) = struct.unpack_from("!I", payload, _REQUEST.size)
    start = _REQUEST.size + 4
    header = json.loads(bytes(payload[start : start + length]))
    error = error_from_reason(header["reason"], header["message"], header["field"])
    return request_id, header["peer"], error, bytes(payload[start + length :]), header["kind"]


def _wire(error: RouteeCallbacksError) -> dict[str, str]:
    return {
        "reason": error.reason,
        "message": getattr(error, "detail", str(error)),
        "field": getattr(error, "field", ""),
    }


def kept(request_id: int, sequence: int | None) -> bytes:
    """The writer's answer for a kept body: the new sequence (0 for a duplicate, or for a probe)."""
    return frame(KEPT, _KEPT.pack(request_id, sequence or 0))


def parse_kept(payload: memoryview) -> tuple[int, int | None]:
    """Read a KEPT answer: request id, sequence (None for a duplicate)."""
    request_id, sequence = _KEPT.unpack_from(payload)
    return request_id, sequence or None


def failed(request_id: int, error: RouteeCallbacksError) -> bytes:
    """The writer's answer for a body it could not keep: the error, by its reason."""
    wire = {
        "reason": error.reason,
        "message": getattr(error, "detail", str(error)),
        "field": getattr(error, "field", ""),
    }
    return frame(FAILED, _REQUEST.pack(request_id) + json.dumps(wire).encode())


def parse_failed(payload: memoryview) -> tuple[int, RouteeCallbacksError]:
    """Read a FAILED answer: request id and the error rebuilt."""
    wire = json.loads(bytes(payload[_REQUEST.size :]))
    return _REQUEST.unpack_from(payload)[0], error_from_reason(wire["reason"], wire["message"], wire["field"])


class FeedFrame:
    """A received FEED frame: the range of sequences it covers, its entries decoded only when asked for."""

    __slots__ = ("_payload", "first", "last")

    def __init__(self, payload: memoryview) -> None:
        self.first, self.last = _RANGE.unpack_from(payload)
        self._payload = payload

    def entries(self) -> list[Entry]:
        """The frame's entries."""
        return parse_feed(self._payload)


def feed(entries: Sequence[Entry]) -> bytes:
    """Committed entries, in sequence order, for every worker; the range first, so a worker may skip the rest."""
    parts: list[bytes] = [_RANGE.pack(entries[0].sequence, entries[-1].sequence)]
    for entry in entries:
        if isinstance(entry, StoredEvent):
            campaign, tracking_id, name = (
                entry.campaign_tracking_id.encode(),
                entry.tracking_id.encode(),
                entry.status_name.encode(),
            )
            parts.append(
                _EVENT.pack(
                    _EVENT_ENTRY,
                    entry.sequence,
                    entry.status,
                    entry.is_current,
                    entry.previous_status,
                    entry.source,
                    entry.channel,
                    entry.part,
                    entry.message_status,
                    entry.update_us,
                    entry.receive_us,
                    len(campaign),
                    len(tracking_id),
                    len(name),
                    len(entry.callback),
                )
            )
            parts += (campaign, tracking_id, name, entry.callback)
        else:
            campaign, reference = entry.campaign_tracking_id.encode(), entry.reference_tracking_id.encode()
            parts.append(
                _INBOUND.pack(
                    _INBOUND_ENTRY,
                    entry.sequence,
                    entry.receive_us,
                    entry.channel,
                    len(campaign),
                    len(reference),
                    len(entry.message),
                )
            )
            parts += (campaign, reference, entry.message)
    return frame(FEED, b"".join(parts))


def _fields(payload: memoryview, offset: int, lengths: Sequence[int]) -> tuple[list[bytes], int]:
    fields = []
    for length in lengths:
        fields.append(bytes(payload[offset : offset + length]))
        offset += length
    return fields, offset


def parse_feed(payload: memoryview) -> list[Entry]:
    """Read a FEED frame back into stored entries."""
    entries: list[Entry] = []
    offset = _RANGE.size
    while offset < len(payload):
        if payload[offset] == _EVENT_ENTRY:
            fields = _EVENT.unpack_from(payload, offset)
            _, sequence, status, is_current, previous, source, channel, part, message_status, update_us, receive_us = (
                fields[:11]
            )
            (campaign, tracking_id, name, callback), offset = _fields(payload, offset + _EVENT.size, fields[11:])
            entry: Entry = StoredEvent(
                sequence,
                tracking_id.decode(),
                campaign.decode(),
                status,
                name.decode(),
                update_us,
                receive_us,
                bool(is_current),
                callback,
                previous,
                source,
                channel,
                part,
                message_status,
            )
        elif payload[offset] == _INBOUND_ENTRY:
            _, sequence, receive_us, channel, *lengths = _INBOUND.unpack_from(payload, offset)
            (campaign, reference, message), offset = _fields(payload, offset + _INBOUND.size, lengths)
            entry = StoredInbound(sequence, campaign.decode(), reference.decode(), receive_us, message, channel)
        else:
            raise FrameError(f"unknown feed entry kind {payload[offset]}")
        entries.append(entry)
    return entries
