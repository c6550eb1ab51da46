"""What reading a body of Routee's gives: the protobuf to keep, and what had to be adjusted to get it."""

from __future__ import annotations

from dataclasses import dataclass, field

from routee.callbacks.v1 import callback_pb2 as pb

#: What happened to a secondary field of a callback: (its JSON path, ``coerced`` or ``dropped``).
Adjustment = tuple[str, str]


@dataclass(frozen=True)
class ParsedCallback:
    """A callback ready to store, and what had to be adjusted to get it (raw_json keeps the original)."""

    callback: pb.ViberCallback | pb.SmsCallback
    adjusted: list[Adjustment] = field(default_factory=list)


@dataclass(frozen=True)
class ParsedInbound:
    """An inbound message ready to store, and what had to be adjusted to get it (raw_json keeps the original)."""

    message: pb.InboundMessage
    adjusted: list[Adjustment] = field(default_factory=list)
