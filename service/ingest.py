"""Keeping what Routee posts: the interface the HTTP ingress calls, and its in-process implementation.

The ingress checks the sender and reads the body; an ``Ingest`` validates it,
stores it durably and says what became of it. ``LocalIngest`` does that on
this process's own log; the service's workers use ``writer_client.RemoteIngest``,
which asks the writer process to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

from routee.callbacks.v1 import callback_pb2 as pb
from service.batch_writer import BatchWriter
from service.store import AppendStatus, Probe

#: Turns a raw body into a callback; raises MalformedJsonError or InvalidCallbackError.
ParseCallback = Callable[[bytes], pb.ViberCallback]


class Kept(NamedTuple):
    """A callback that was kept: its new event's sequence, or None when it was a duplicate."""

    sequence: int | None
    tracking_id: str


class Ingest(Protocol):
    """What the HTTP ingress needs to keep a callback."""

    async def status_callback(self, body: bytes) -> Kept:
        """Validate and durably store one status callback body.

        Raises a RejectedError (the body can never be kept) or an UnavailableError (try again later).
        """

    async def probe(self) -> None:
        """Prove that a write would be kept now; raise an UnavailableError otherwise."""


class LocalIngest:
    """Validates here and writes through this process's batch writer."""

    def __init__(self, writer: BatchWriter, parse: ParseCallback) -> None:
        self._writer = writer
        self._parse = parse

    async def status_callback(self, body: bytes) -> Kept:
        """Validate, then store with group commit."""
        callback = self._parse(body)
        event = await self._writer.submit(AppendStatus(callback))
        return Kept(None if event is None else event.sequence, callback.tracking_id)

    async def probe(self) -> None:
        """Write a heartbeat through the batch writer."""
        await self._writer.submit(Probe())
