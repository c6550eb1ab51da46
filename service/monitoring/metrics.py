"""Prometheus metrics of the service, on a registry of their own so tests can build many.

In a running service every process (workers and the writer process) records
into files of one directory (prometheus-client's multiprocess mode, switched
on by the process model before any of them starts); ``render`` then sums
them, so any worker's ``/metrics`` shows the whole instance. Gauges say how
they combine across processes.

Each update of such a metric is a write to a shared memory-mapped file (about
a microsecond and a half with its locking): the two updates every kept
callback made cost a tenth of the ingress's throughput (measured). So kept
callbacks are counted in plain Python and added to the shared metrics by
``flush``, once a second and before every ``render``.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from service.domain.rules import BODY_KINDS
from service.monitoring.catalog import (
    ADJUSTMENT_ACTIONS,
    LATENCY_BUCKETS,
    METRICS,
    REFUSAL_REASONS,
    TRACKING_ENDPOINTS,
    TRACKING_OUTCOMES,
)

_T = TypeVar("_T", bound="_Sequenced")
#: The ``channel`` label's values (routee.callbacks.v1.Channel, in lower case).
CHANNEL_LABELS = ("viber", "sms")


class _Sequenced(Protocol):
    @property
    def sequence(self) -> int: ...


class AllowlistState(Protocol):
    """What the allowlist gauges read."""

    max_stale: float
    last_error: str | None

    def age(self) -> float:
        """Seconds since the last good answer (NaN before the first)."""

    def size(self) -> int:
        """Addresses in the allowlist in use."""


class Metrics:
    """Every metric the service exports (``METRICS``); names start with ``routee_callbacks_``."""

    callbacks: Counter
    inbound_messages: Counter
    last_kept: Gauge
    ready: Gauge
    tracking_calls: Counter
    reconciled_events: Counter
    tracking_mismatches: Counter
    connections_refused: Counter
    fields_adjusted: Counter
    ingest_seconds: Histogram
    commit_seconds: Histogram
    write_failures: Counter
    commit_batch_size: Histogram
    subscribers: Gauge
    updates_streamed: Counter
    catch_ups: Counter
    catching_up: Gauge
    last_sequence: Gauge
    quarantined: Gauge
    quarantined_bytes: Gauge
    allowlist_addresses: Gauge
    allowlist_age_seconds: Gauge
    allowlist_max_stale_seconds: Gauge
    allowlist_lookup_failing: Gauge

    def __init__(self, registry: CollectorRegistry | None = None, *, multiprocess_dir: Path | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._multiprocess_dir = multiprocess_dir
        self._allowlist: AllowlistState | None = None
        self._kept = {(channel, outcome): 0 for channel in CHANNEL_LABELS for outcome in ("accepted", "duplicate")}
        self._latencies = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, the last one +Inf
        self._latency_sum = 0.0
        for spec in METRICS:
            setattr(self, spec.attribute, spec.build(self.registry))
        for counter in (self.callbacks, self.inbound_messages):  # Exported from the start: alerts compare to 0.
            for channel, outcome in self._kept:
                counter.labels(outcome, "", channel)
        self._export_known_labels()

    def _export_known_labels(self) -> None:
        """Create every series whose label values are known in advance, at 0: a panel shows 0 rather than "no
        data", and an alert can tell zero from absent."""
        for reason in REFUSAL_REASONS:
            self.connections_refused.labels(reason)
        for endpoint in TRACKING_ENDPOINTS:
            for outcome in TRACKING_OUTCOMES:
                self.tracking_calls.labels(endpoint, outcome)
        for kind in BODY_KINDS:
            self.last_kept.labels(kind)

    def expect_adjustments(self, fields: Iterable[str]) -> None:
        """Export the adjustment counters of these fields (JSON paths) at 0, for every action."""
        for field in fields:
            for action in ADJUSTMENT_ACTIONS:
                self.fields_adjusted.labels(field, action)

    def callback_kept(self, duplicate: bool, seconds: float, channel: str = "viber") -> None:
        """Count one kept callback of a channel and the time it took (added to the shared metrics at the next
        ``flush``)."""
        self._kept[(channel, "duplicate" if duplicate else "accepted")] += 1
        self._latencies[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._latency_sum += seconds

    def inbound_kept(self, duplicate: bool, channel: str = "viber") -> None:
        """Count one kept inbound message of a channel."""
        self.inbound_messages.labels("duplicate" if duplicate else "accepted", "", channel).inc()
        if not duplicate:
            self.last_kept.labels("inbound" if channel == "viber" else "sms_inbound").set(time.time())

    def flush(self) -> None:
        """Add what ``callback_kept`` counted to the shared metrics."""
        for channel, kind in (("viber", "status"), ("sms", "sms")):
            if self._kept[(channel, "accepted")]:
                self.last_kept.labels(kind).set(time.time())
        for (channel, outcome), count in self._kept.items():
            if count:
                self.callbacks.labels(outcome, "", channel).inc(count)
                self._kept[(channel, outcome)] = 0
        if any(self._latencies):
            # Histogram.observe adds one observation at a time; its bucket and sum values take many at once.
            for index, count in enumerate(self._latencies):
                if count:
                    self.ingest_seconds._buckets[index].inc(count)
                    self._latencies[index] = 0
            self.ingest_seconds._sum.inc(self._latency_sum)
            self._latency_sum = 0.0

    def observe_commit(self, seconds: float, size: int) -> None:
        """Record one committed batch."""
        self.commit_seconds.observe(seconds)
        self.commit_batch_size.observe(size)

    def observe_readiness(self, checks: Mapping[str, bool]) -> None:
        """Record the outcome of each readiness check."""
        for check, ready in checks.items():
            self.ready.labels(check).set(1 if ready else 0)

    def published(self, publish: Callable[[Sequence[_T]], None]) -> Callable[[Sequence[_T]], None]:
        """Wrap a publish function so that the last published sequence is exported."""

        def publish_and_count(entries: Sequence[_T]) -> None:
            publish(entries)
            if entries:
                self.last_sequence.set(entries[-1].sequence)

        return publish_and_count

    def watch_allowlist(self, allowlist: AllowlistState) -> None:
        """Export the allowlist's bound now, and its age, size and failing lookups at every ``render`` and
        ``refresh``."""
        self._allowlist = allowlist
        self.allowlist_max_stale_seconds.set(allowlist.max_stale)  # A setting: once is enough.

    def refresh(self) -> None:
        """Flush what was counted and read the values that are sampled (each process does this every second)."""
        self.flush()
        if self._allowlist is not None:
            self.allowlist_age_seconds.set(self._allowlist.age())
            self.allowlist_addresses.set(self._allowlist.size())
            self.allowlist_lookup_failing.set(0 if self._allowlist.last_error is None else 1)

    def render(self) -> bytes:
        """Every metric in the Prometheus text format: this process's, or the whole instance's."""
        self.refresh()
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self._multiprocess_dir))  # type: ignore[no-untyped-call]
        return generate_latest(registry)
