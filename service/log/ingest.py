"""Keeping what Routee posts: the interface the HTTP ingress calls, and its in-process implementation.

Routee posts two kinds of body (``service.store.STATUS`` callbacks and
``INBOUND`` messages, the replies). The ingress checks the sender and reads
the body; an ``Ingest`` validates it, stores it durably and says what became
of it. ``LocalIngest`` does that on
this process's own log; the service's workers use ``writer_client.RemoteIngest``,
which asks the writer process to.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.errors import RejectedError, RouteeCallbacksError
from service.log.batch_writer import BatchWriter
from service.monitoring.metrics import Metrics
from service.routee.parsed import Adjustment, ParsedCallback, ParsedInbound
from service.store import AppendInbound, AppendStatus, Probe, Quarantine

_LOGGER = logging.getLogger("service.ingest")

ADJUSTMENT_LOG_INTERVAL = 60.0

Append = AppendStatus | AppendInbound
#: Turns a raw body into the job that stores it; raises MalformedJsonError or InvalidCallbackError.
ParseBody = Callable[[bytes], Append]
#: A parser for each kind of body (STATUS, INBOUND).
Parsers = Mapping[str, ParseBody]


def job(parsed: ParsedCallback | ParsedInbound) -> Append:
    """The job that stores what a parser read."""
    return AppendStatus(parsed.callback) if isinstance(parsed, ParsedCallback) else AppendInbound(parsed.message)


def identity(job: Append) -> str:
    """The tracking id a stored body is about: the message of a status callback, the message a reply answers (an
    inbound SMS: its own id)."""
    if isinstance(job, AppendStatus):
        callback = job.callback
        return callback.message_id if isinstance(callback, pb.SmsCallback) else callback.tracking_id
    return job.message.message_id or job.message.reference_tracking_id


class AdjustmentRecorder:
    """Wraps one of the ingress's parsers: counts the fields it coerced or dropped, and says so in the log, at most
    once a minute (a format change at Routee would otherwise write a line per body)."""

    def __init__(
        self,
        parse: Callable[[bytes], ParsedCallback | ParsedInbound],
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._parse = parse
        self._metrics = metrics
        self._clock = clock
        self._next_log = 0.0
        self._unlogged: Counter[Adjustment] = Counter()

    def __call__(self, body: bytes) -> Append:
        """Parse, and record what was adjusted."""
        parsed = self._parse(body)
        if parsed.adjusted:
            for path, action in parsed.adjusted:
                self._metrics.fields_adjusted.labels(path, action).inc()
            self._unlogged.update(parsed.adjusted)
            if self._clock() >= self._next_log:
                self._next_log = self._clock() + ADJUSTMENT_LOG_INTERVAL
                _LOGGER.warning(
                    "fields of an unexpected type were coerced or left unset (raw_json keeps them)",
                    extra={
                        "tracking_id": identity(job(parsed)),
                        "fields": {f"{path} ({action})": count for (path, action), count in self._unlogged.items()},
                    },
                )
                self._unlogged.clear()
        return job(parsed)


class Kept(NamedTuple):
    """A body that was kept: its new entry's sequence, or None when it was a duplicate; and its tracking id."""

    sequence: int | None
    tracking_id: str


@dataclass(frozen=True)
class Refusals:
    """How a body refused for its content is kept in quarantine: with the HTTP status it was answered (the
    ingress's own mapping, injected), within a bound."""

    status_of: Callable[[RouteeCallbacksError], int]
    max_bytes: int = 64 * 1024 * 1024

    def job(self, kind: str, body: bytes, peer: str, error: RejectedError) -> Quarantine:
        """The quarantine job for a refused body of a kind."""
        return Quarantine(body, peer, self.status_of(error), error.reason, str(error), self.max_bytes, kind)


class Ingest(Protocol):
    """What the HTTP ingress needs to keep what Routee posts."""

    async def keep(self, kind: str, body: bytes, peer: str) -> Kept:
        """Validate and durably store one body of a kind (STATUS or INBOUND) from an allowed sender.

        Raises a RejectedError when the body can never be kept (it is in quarantine by then), or an
        UnavailableError (try again later; also when even the quarantine could not keep it).
        """

    async def refuse(self, kind: str, body: bytes, peer: str, error: RejectedError) -> None:
        """Keep a body the ingress refused itself (413, 415) in quarantine; raise an UnavailableError if it cannot."""

    async def probe(self) -> None:
        """Prove that a write would be kept now; raise an UnavailableError otherwise."""


async def parse_or_refuse(ingest: Ingest, parsers: Parsers, kind: str, body: bytes, peer: str) -> Append:
    """The job that keeps a body of a kind; a body that cannot be parsed is quarantined through ``ingest``, then
    its RejectedError raised."""
    try:
        return parsers[kind](body)
    except RejectedError as ex:
        await ingest.refuse(kind, body, peer, ex)
        raise


class LocalIngest:
    """Validates here and writes through this process's batch writer."""

    def __init__(self, writer: BatchWriter, parsers: Parsers, refusals: Refusals) -> None:
        self._writer = writer
        self._parsers = parsers
        self._refusals = refusals

    async def keep(self, kind: str, body: bytes, peer: str) -> Kept:
        """Validate, then store with group commit; a body that cannot be kept goes to quarantine."""
        job = await parse_or_refuse(self, self._parsers, kind, body, peer)
        entry = await self._writer.submit(job)
        return Kept(None if entry is None else entry.sequence, identity(job))

    async def refuse(self, kind: str, body: bytes, peer: str, error: RejectedError) -> None:
        """Keep the refused body in quarantine."""
        await self._writer.submit(self._refusals.job(kind, body, peer, error))

    async def probe(self) -> None:
        """Write a heartbeat through the batch writer."""
        await self._writer.submit(Probe())
