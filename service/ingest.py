"""Keeping what Routee posts: the interface the HTTP ingress calls, and its in-process implementation.

The ingress checks the sender and reads the body; an ``Ingest`` validates it,
stores it durably and says what became of it. ``LocalIngest`` does that on
this process's own log; the service's workers use ``writer_client.RemoteIngest``,
which asks the writer process to.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from routee.callbacks.v1 import callback_pb2 as pb
from service.batch_writer import BatchWriter
from service.errors import RejectedError, RouteeCallbacksError
from service.metrics import Metrics
from service.store import AppendStatus, Probe, Quarantine

_LOGGER = logging.getLogger(__name__)

#: What happened to a secondary field of a callback: (its JSON path, ``coerced`` or ``dropped``).
Adjustment = tuple[str, str]
ADJUSTMENT_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class ParsedCallback:
    """A callback ready to store, and what had to be adjusted to get it (raw_json keeps the original)."""

    callback: pb.ViberCallback
    adjusted: list[Adjustment] = field(default_factory=list)


#: Turns a raw body into a callback; raises MalformedJsonError or InvalidCallbackError.
ParseCallback = Callable[[bytes], pb.ViberCallback]


class AdjustmentRecorder:
    """Wraps the ingress's parser: counts the fields it coerced or dropped, and says so in the log, at most once a
    minute (a format change at Routee would otherwise write a line per callback)."""

    def __init__(
        self,
        parse: Callable[[bytes], ParsedCallback],
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._parse = parse
        self._metrics = metrics
        self._clock = clock
        self._next_log = 0.0
        self._unlogged: Counter[Adjustment] = Counter()

    def __call__(self, body: bytes) -> pb.ViberCallback:
        """Parse, and record what was adjusted."""
        parsed = self._parse(body)
        if parsed.adjusted:
            for path, action in parsed.adjusted:
                self._metrics.fields_adjusted.labels(path, action).inc()
            self._unlogged.update(parsed.adjusted)
            if self._clock() >= self._next_log:
                self._next_log = self._clock() + ADJUSTMENT_LOG_INTERVAL
                _LOGGER.warning(
                    "callback fields of an unexpected type were coerced or left unset (raw_json keeps them)",
                    extra={
                        "tracking_id": parsed.callback.tracking_id,
                        "fields": {f"{path} ({action})": count for (path, action), count in self._unlogged.items()},
                    },
                )
                self._unlogged.clear()
        return parsed.callback


class Kept(NamedTuple):
    """A callback that was kept: its new event's sequence, or None when it was a duplicate."""

    sequence: int | None
    tracking_id: str


@dataclass(frozen=True)
class Refusals:
    """How a body refused for its content is kept in quarantine: with the HTTP status it was answered (the
    ingress's own mapping, injected), within a bound."""

    status_of: Callable[[RouteeCallbacksError], int]
    max_bytes: int = 64 * 1024 * 1024

    def job(self, body: bytes, peer: str, error: RejectedError) -> Quarantine:
        """The quarantine job for a refused body."""
        return Quarantine(body, peer, self.status_of(error), error.reason, str(error), self.max_bytes)


class Ingest(Protocol):
    """What the HTTP ingress needs to keep a callback."""

    async def status_callback(self, body: bytes, peer: str) -> Kept:
        """Validate and durably store one status callback body from an allowed sender.

        Raises a RejectedError when the body can never be kept (it is in quarantine by then), or an
        UnavailableError (try again later; also when even the quarantine could not keep it).
        """

    async def refuse(self, body: bytes, peer: str, error: RejectedError) -> None:
        """Keep a body the ingress refused itself (413, 415) in quarantine; raise an UnavailableError if it cannot."""

    async def probe(self) -> None:
        """Prove that a write would be kept now; raise an UnavailableError otherwise."""


class LocalIngest:
    """Validates here and writes through this process's batch writer."""

    def __init__(self, writer: BatchWriter, parse: ParseCallback, refusals: Refusals) -> None:
        self._writer = writer
        self._parse = parse
        self._refusals = refusals

    async def status_callback(self, body: bytes, peer: str) -> Kept:
        """Validate, then store with group commit; a body that cannot be kept goes to quarantine."""
        try:
            callback = self._parse(body)
        except RejectedError as ex:
            await self.refuse(body, peer, ex)
            raise
        event = await self._writer.submit(AppendStatus(callback))
        return Kept(None if event is None else event.sequence, callback.tracking_id)

    async def refuse(self, body: bytes, peer: str, error: RejectedError) -> None:
        """Keep the refused body in quarantine."""
        await self._writer.submit(self._refusals.job(body, peer, error))

    async def probe(self) -> None:
        """Write a heartbeat through the batch writer."""
        await self._writer.submit(Probe())
