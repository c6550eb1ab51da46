"""Every metric the service exports: its type, name, help and labels, in one table (``METRICS``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Label values known in advance (exported at 0 from the start).
REFUSAL_REASONS = (
    "source_not_allowed",
    "over_capacity",
    "tls_handshake",
    "header_timeout",
    "body_timeout",
    "header_too_large",
    "allowlist_unavailable",
)
TRACKING_ENDPOINTS = ("token", "message", "campaign", "sms_message", "sms_campaign")
TRACKING_OUTCOMES = ("ok", "not_found", "rate_limited", "server_error", "unreachable", "unauthorized", "error")
ADJUSTMENT_ACTIONS = ("coerced", "dropped")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class Spec:
    """One metric: the attribute of ``Metrics`` that holds it, its type, name, help and labels, and how it
    combines across processes (gauges) or its buckets (histograms)."""

    attribute: str
    kind: type[Counter | Gauge | Histogram]
    name: str
    documentation: str
    labels: tuple[str, ...] = ()
    multiprocess_mode: str | None = None
    buckets: tuple[float, ...] | None = None

    def build(self, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
        options: dict[str, Any] = {}
        if self.multiprocess_mode is not None:
            options["multiprocess_mode"] = self.multiprocess_mode
        if self.buckets is not None:
            options["buckets"] = self.buckets
        return self.kind(self.name, self.documentation, self.labels, registry=registry, **options)


METRICS = (
    Spec(
        "callbacks",
        Counter,
        "routee_callbacks_callbacks",
        "Status callbacks received (Viber callbacks, SMS delivery reports), by outcome (accepted, duplicate,"
        " rejected, unavailable), reason and channel (viber, sms).",
        ("outcome", "reason", "channel"),
    ),
    Spec(
        "inbound_messages",
        Counter,
        "routee_callbacks_inbound_messages",
        "Inbound messages (Viber replies, inbound SMS) received, by outcome (accepted, duplicate, rejected,"
        " unavailable), reason and channel (viber, sms).",
        ("outcome", "reason", "channel"),
    ),
    Spec(
        "last_kept",
        Gauge,
        "routee_callbacks_last_accepted_timestamp_seconds",
        "When this instance last accepted (kept, not as a duplicate) a body, by kind (status, inbound, sms,"
        " sms_inbound); Unix"
        " seconds, to the second.",
        ("kind",),
        multiprocess_mode="max",
    ),
    Spec(
        "ready",
        Gauge,
        "routee_callbacks_ready",
        "Each /readyz check (store, allowlist): 1 when it passes, 0 when it fails in any worker; sampled every"
        " few seconds.",
        ("check",),
        multiprocess_mode="livemin",
    ),
    Spec(
        "tracking_calls",
        Counter,
        "routee_callbacks_tracking_api_calls",
        "Calls to Routee's tracking API, by endpoint (token, message, campaign) and outcome (ok, not_found,"
        " rate_limited, server_error, unreachable, unauthorized, error).",
        ("endpoint", "outcome"),
    ),
    Spec(
        "reconciled_events",
        Counter,
        "routee_callbacks_reconciled_events",
        "Status events found by asking Routee's tracking API that no callback had brought.",
        (),
    ),
    Spec(
        "tracking_mismatches",
        Counter,
        "routee_callbacks_tracking_api_mismatches",
        "Answers of Routee's tracking API about another message than the one asked for (discarded).",
        (),
    ),
    Spec(
        "connections_refused",
        Counter,
        "routee_callbacks_http_connections_refused",
        "HTTP connections turned away or cut off before the app saw a request, by reason ("
        + ", ".join(REFUSAL_REASONS)
        + ").",
        ("reason",),
    ),
    Spec(
        "fields_adjusted",
        Counter,
        "routee_callbacks_callback_fields_adjusted",
        "Secondary fields of kept callbacks that had an unexpected type, by JSON path and action (coerced, or"
        " dropped: left unset in the protobuf; raw_json keeps them).",
        ("field", "action"),
    ),
    Spec(
        "ingest_seconds",
        Histogram,
        "routee_callbacks_ingest_seconds",
        "Time from a callback's arrival to its answer, for callbacks that were kept.",
        (),
        buckets=LATENCY_BUCKETS,
    ),
    Spec(
        "commit_seconds",
        Histogram,
        "routee_callbacks_store_commit_seconds",
        "Time to write and commit one batch of callbacks (one fsync with synchronous=FULL).",
        (),
        buckets=LATENCY_BUCKETS,
    ),
    Spec(
        "write_failures",
        Counter,
        "routee_callbacks_store_write_failures",
        "Batches the store failed to write (each of their callbacks answered 503).",
        (),
    ),
    Spec(
        "commit_batch_size",
        Histogram,
        "routee_callbacks_store_commit_batch_size",
        "Callbacks committed together in one transaction (group commit).",
        (),
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    ),
    Spec(
        "subscribers",
        Gauge,
        "routee_callbacks_subscribers",
        "Open streams (StreamStatusUpdates and StreamInboundMessages).",
        (),
        multiprocess_mode="livesum",
    ),
    Spec("updates_streamed", Counter, "routee_callbacks_updates_streamed", "Live updates written to streams.", ()),
    Spec(
        "catch_ups",
        Counter,
        "routee_callbacks_stream_catch_ups",
        "Times a slow stream was moved to catching up from the store.",
        (),
    ),
    Spec(
        "catching_up",
        Gauge,
        "routee_callbacks_streams_catching_up",
        "Streams reading from the store rather than live (resumed from an earlier sequence, or fell behind).",
        (),
        multiprocess_mode="livesum",
    ),
    Spec(
        "last_sequence",
        Gauge,
        "routee_callbacks_last_sequence",
        "The greatest sequence published in this instance.",
        (),
        multiprocess_mode="livemax",
    ),
    Spec(
        "quarantined",
        Gauge,
        "routee_callbacks_quarantined_bodies",
        "Bodies refused for their content and held in quarantine (routee-callbacks quarantine list).",
        (),
        multiprocess_mode="livemax",
    ),
    Spec(
        "quarantined_bytes",
        Gauge,
        "routee_callbacks_quarantined_bytes",
        "Bytes the quarantine holds, each body counted with its row (bounded by --quarantine-max-mb).",
        (),
        multiprocess_mode="livemax",
    ),
    # Not livemin: the writer process exports 0 for every gauge it has.
    Spec(
        "allowlist_addresses",
        Gauge,
        "routee_callbacks_allowlist_addresses",
        "Addresses in the DNS allowlist in use (the most of any worker).",
        (),
        multiprocess_mode="livemax",
    ),
    Spec(
        "allowlist_age_seconds",
        Gauge,
        "routee_callbacks_allowlist_age_seconds",
        "Age of the DNS allowlist in use (the oldest of any worker; NaN before the first answer).",
        (),
        multiprocess_mode="livemax",
    ),
    Spec(
        "allowlist_max_stale_seconds",
        Gauge,
        "routee_callbacks_allowlist_max_stale_seconds",
        "How old the DNS allowlist may grow while lookups fail (--dns-max-stale); past it, callbacks get 503.",
        (),
        multiprocess_mode="livemax",
    ),
    Spec(
        "allowlist_lookup_failing",
        Gauge,
        "routee_callbacks_allowlist_lookup_failing",
        "1 while the last lookup of the allowlist's name failed in any worker (the last good answer is kept).",
        (),
        multiprocess_mode="livemax",
    ),
)
