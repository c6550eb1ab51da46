"""Prometheus metrics of the service, on a registry of their own so tests can build many."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    """Every metric the service exports; names start with ``routee_callbacks_``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.callbacks = Counter(
            "routee_callbacks_callbacks",
            "Callbacks received, by outcome (accepted, duplicate, rejected, unavailable) and reason.",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.ingest_seconds = Histogram(
            "routee_callbacks_ingest_seconds",
            "Time from a callback's arrival to its answer, for callbacks that were kept.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "routee_callbacks_store_commit_seconds",
            "Time to write and commit one batch of callbacks (one fsync with synchronous=FULL).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commit_batch_size = Histogram(
            "routee_callbacks_store_commit_batch_size",
            "Callbacks committed together in one transaction (group commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.subscribers = Gauge(
            "routee_callbacks_subscribers", "Open StreamStatusUpdates streams.", registry=self.registry
        )
        self.updates_streamed = Counter(
            "routee_callbacks_updates_streamed", "Live updates written to streams.", registry=self.registry
        )
        self.catch_ups = Counter(
            "routee_callbacks_stream_catch_ups",
            "Times a slow stream was moved to catching up from the store.",
            registry=self.registry,
        )
        self.last_sequence = Gauge(
            "routee_callbacks_last_sequence", "The greatest sequence stored.", registry=self.registry
        )
        self.allowlist_addresses = Gauge(
            "routee_callbacks_allowlist_addresses",
            "Addresses in the DNS allowlist in use.",
            registry=self.registry,
        )
        self.allowlist_age_seconds = Gauge(
            "routee_callbacks_allowlist_age_seconds",
            "Age of the DNS allowlist in use (NaN before the first answer).",
            registry=self.registry,
        )

    def observe_commit(self, seconds: float, size: int) -> None:
        """Record one committed batch; called from the store's writer thread."""
        self.commit_seconds.observe(seconds)
        self.commit_batch_size.observe(size)
