"""Metrics: what is counted in plain Python reaches the exported metrics exactly as if recorded one by one."""

from __future__ import annotations

import math
import time

from prometheus_client import CollectorRegistry, generate_latest

from service.monitoring.metrics import Metrics


def samples(metrics: Metrics, prefix: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in generate_latest(metrics.registry).decode().splitlines()
        if line.startswith(prefix) and "_created" not in line
    }


class TestKeptCallbacks:
    """Counting kept callbacks."""

    def test_flushed_counts_equal_one_by_one_recording(self) -> None:
        """callback_kept then flush exports the same counter and histogram as inc and observe per callback."""
        latencies = [0.0004, 0.001, 0.0031, 0.0031, 0.02, 0.7, 9.0]
        batched, direct = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
        for number, seconds in enumerate(latencies):
            duplicate = number % 3 == 0
            batched.callback_kept(duplicate, seconds)
            direct.callbacks.labels("duplicate" if duplicate else "accepted", "", "viber").inc()
            direct.ingest_seconds.observe(seconds)
        assert samples(batched, "routee_callbacks_ingest_seconds_count") == {
            "routee_callbacks_ingest_seconds_count": 0.0
        }, "nothing is exported before a flush"
        batched.flush()
        for prefix in ("routee_callbacks_callbacks_total", "routee_callbacks_ingest_seconds"):
            assert samples(batched, prefix) == samples(direct, prefix)
        batched.flush()
        assert samples(batched, "routee_callbacks_ingest_seconds_count") == {
            "routee_callbacks_ingest_seconds_count": len(latencies)
        }, "a second flush adds nothing"

    def test_render_flushes_first(self) -> None:
        """What /metrics shows includes everything counted so far."""
        metrics = Metrics(CollectorRegistry())
        metrics.callback_kept(False, 0.002)
        assert b'routee_callbacks_callbacks_total{channel="viber",outcome="accepted",reason=""} 1.0' in metrics.render()


class FakeAllowlist:
    """An allowlist whose state the test sets."""

    def __init__(self, *, age: float, size: int, max_stale: float, last_error: str | None) -> None:
        self._age, self._size, self.max_stale, self.last_error = age, size, max_stale, last_error

    def age(self) -> float:
        return self._age

    def size(self) -> int:
        return self._size


class TestWhatAlertsRead:
    """The metrics the alerting rules need (docs/monitoring)."""

    def test_kept_outcomes_are_exported_as_zero_before_any(self) -> None:
        """An alert on "nothing accepted" compares with 0: the series must exist before the first callback."""
        metrics = Metrics(CollectorRegistry())
        for name in ("routee_callbacks_callbacks_total", "routee_callbacks_inbound_messages_total"):
            for outcome in ("accepted", "duplicate"):
                labels = {"outcome": outcome, "reason": "", "channel": "viber"}
                assert metrics.registry.get_sample_value(name, labels) == 0

    def test_the_last_accepted_time_moves_with_accepted_bodies_only(self) -> None:
        """It starts at 0 ("never"); duplicates do not move it; an accepted callback or inbound message sets it to
        now, by kind."""
        metrics = Metrics(CollectorRegistry())

        def last(kind: str) -> float | None:
            return metrics.registry.get_sample_value("routee_callbacks_last_accepted_timestamp_seconds", {"kind": kind})

        metrics.callback_kept(True, 0.001)
        metrics.inbound_kept(True)
        metrics.flush()
        assert last("status") == 0
        assert last("inbound") == 0
        before = time.time()
        metrics.callback_kept(False, 0.001)
        metrics.flush()
        metrics.inbound_kept(False)
        assert before <= (last("status") or 0) <= time.time()
        assert before <= (last("inbound") or 0) <= time.time()
        assert (
            metrics.registry.get_sample_value(
                "routee_callbacks_inbound_messages_total", {"outcome": "duplicate", "reason": "", "channel": "viber"}
            )
            == 1
        )

    def test_readiness_and_the_allowlist_are_sampled(self) -> None:
        """Each readiness check is a 0/1 series; the allowlist's age, bound, size and failing lookups follow it."""
        metrics = Metrics(CollectorRegistry())
        allowlist = FakeAllowlist(age=12.5, size=3, max_stale=600, last_error="timed out")
        metrics.watch_allowlist(allowlist)
        metrics.observe_readiness({"store": True, "allowlist": False})
        metrics.refresh()
        value = metrics.registry.get_sample_value
        assert value("routee_callbacks_ready", {"check": "store"}) == 1
        assert value("routee_callbacks_ready", {"check": "allowlist"}) == 0
        assert value("routee_callbacks_allowlist_age_seconds") == 12.5
        assert value("routee_callbacks_allowlist_max_stale_seconds") == 600
        assert value("routee_callbacks_allowlist_addresses") == 3
        assert value("routee_callbacks_allowlist_lookup_failing") == 1
        allowlist.last_error, allowlist._age = None, float("nan")
        metrics.refresh()
        assert value("routee_callbacks_allowlist_lookup_failing") == 0
        assert math.isnan(value("routee_callbacks_allowlist_age_seconds") or 0.0)
