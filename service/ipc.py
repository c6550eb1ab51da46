"""The frames workers and the writer process exchange over their private Unix socket.

A frame is a 4-byte big-endian length, a 1-byte kind and the payload. Workers
send bodies to keep and probes; the writer answers each with a result carrying
the same request id, and pushes the log as it is committed (``FEED``): every
entry with the fields the broker routes by and its stream item, serialized
once for every worker.

Only processes of one service instance speak this, through a socket in a
directory only its user can enter; still, nothing here is ``pickle``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Sequence

from service.broker import Update
from service.errors import RouteeCallbacksError, error_from_reason

# Worker to writer.
SUBMIT_STATUS = 1
PROBE = 2
# Writer to worker.
KEPT = 10
FAILED = 11
FEED = 12

_HEADER = struct.Struct("!IB")
_REQUEST = struct.Struct("!I")
_KEPT = struct.Struct("!IQ")
_ENTRY = struct.Struct("!QBHI")
#: The largest frame either side accepts: a 64 KiB body, or a feed page.
MAX_FRAME = 64 * 1024 * 1024


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


def request(kind: int, request_id: int, body: bytes = b"") -> bytes:
    """A worker's request: its id, then the body (empty for a probe)."""
    return frame(kind, _REQUEST.pack(request_id) + body)


def parse_request(payload: memoryview) -> tuple[int, bytes]:
    """Split a request into its id and body."""
    return _REQUEST.unpack_from(payload)[0], bytes(payload[_REQUEST.size :])


def kept(request_id: int, sequence: int | None, tracking_id: str) -> bytes:
    """The writer's answer for a kept body: the new sequence (0 for a duplicate) and the tracking id."""
    return frame(KEPT, _KEPT.pack(request_id, sequence or 0) + tracking_id.encode())


def parse_kept(payload: memoryview) -> tuple[int, int | None, str]:
    """Read a KEPT answer: request id, sequence (None for a duplicate), tracking id."""
    request_id, sequence = _KEPT.unpack_from(payload)
    return request_id, sequence or None, bytes(payload[_KEPT.size :]).decode()


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


def feed(updates: Sequence[Update]) -> bytes:
    """Committed entries, in sequence order, for every worker."""
    parts: list[bytes] = []
    for update in updates:
        campaign = update.campaign_tracking_id.encode()
        payload = update.payload
        parts.append(_ENTRY.pack(update.sequence, update.status, len(campaign), len(payload)))
        parts.append(campaign)
        parts.append(payload)
    return frame(FEED, b"".join(parts))


def parse_feed(payload: memoryview) -> list[Update]:
    """Read a FEED frame back into updates (their stream items already serialized)."""
    updates = []
    offset = 0
    while offset < len(payload):
        sequence, status, campaign_length, payload_length = _ENTRY.unpack_from(payload, offset)
        offset += _ENTRY.size
        campaign = bytes(payload[offset : offset + campaign_length]).decode()
        offset += campaign_length
        item = bytes(payload[offset : offset + payload_length])
        offset += payload_length
        updates.append(Update(sequence, campaign, status, payload=item))
    return updates
