"""Metrics: what is counted in plain Python reaches the exported metrics exactly as if recorded one by one."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from service.metrics import Metrics


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
            direct.callbacks.labels("duplicate" if duplicate else "accepted", "").inc()
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
        assert b'routee_callbacks_callbacks_total{outcome="accepted",reason=""} 1.0' in metrics.render()
