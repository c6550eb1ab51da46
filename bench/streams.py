"""Streams and reads: fan-out against a bare grpc.aio server, unary reads, memory per stream, a soak, and the
latency of an update between instances."""

from __future__ import annotations

import contextlib
import http.client
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.harness import (
    CALLBACKS_PATH,
    FIXTURE,
    ROOT,
    Poster,
    clients,
    free_port,
    process,
    service,
    spread,
    subscribers_against,
)


@contextlib.contextmanager
def bare_server(rate: float) -> Iterator[int]:
    """The bare grpc.aio baseline publishing ``rate`` updates a second (0: none); yields its port once ready."""
    port = free_port()
    command = [sys.executable, "-m", "bench.bare_grpc", str(port), str(rate)]
    with process(command, stdout=subprocess.PIPE, cwd=ROOT) as bare:
        assert bare.stdout is not None
        bare.stdout.readline()  # "ready"
        yield port


def fanout_round(workdir: Path, count: int, rate: float, window: float) -> tuple[dict[str, float], dict[str, float]]:
    with service(workdir) as ours:
        measured = subscribers_against(ours.grpc_target, count, window, (ours.http_port, rate))
    with bare_server(rate) as bare_port:
        baseline = subscribers_against(f"127.0.0.1:{bare_port}", count, window, None)
    return baseline, measured


def bench_fanout(workdir: Path, counts: list[int], seconds: float, rounds: int) -> dict[str, Any]:
    rates = {1: 50.0, 100: 50.0, 1000: 5.0, 10000: 0.5}
    results: dict[str, Any] = {}
    for count in counts:
        rate = rates.get(count, 20.0)
        # 10 000 streams take a while to open and see few publishes a second: one longer round.
        pairs = (
            [fanout_round(workdir, count, rate, max(seconds, 20.0))]
            if count >= 10000
            else [fanout_round(workdir, count, rate, seconds) for _ in range(rounds)]
        )
        results[str(count)] = {
            "publishes_per_second": rate,
            "ours": {key: spread([ours[key] for _, ours in pairs]) for key in ("p50_ms", "p99_ms", "per_second")},
            "baseline": {key: spread([base[key] for base, _ in pairs]) for key in ("p50_ms", "p99_ms", "per_second")},
            "p99_ratio": spread([ours["p99_ms"] / base["p99_ms"] for base, ours in pairs]),
            "deliveries_ratio": spread(
                [
                    ours["per_second"] / base["per_second"] if base["per_second"] else float("nan")
                    for base, ours in pairs
                ]
            ),
            "rounds": pairs,
        }
    return results


def bench_unary(workdir: Path, seconds: float, rounds: int) -> dict[str, Any]:
    pairs = []
    for _ in range(rounds):
        with service(workdir) as ours:
            connection = http.client.HTTPConnection("127.0.0.1", ours.http_port)
            connection.request("POST", CALLBACKS_PATH, FIXTURE, {"Content-Type": "application/json"})
            connection.getresponse().read()
            proc = clients("unary", ours.grpc_target, 32, seconds, json.loads(FIXTURE)["trackingId"])
            measured = json.loads(proc.communicate(timeout=seconds + 60)[0])
        with bare_server(0) as bare_port:
            proc = clients("unary", f"127.0.0.1:{bare_port}", 32, seconds, "bench")
            baseline = json.loads(proc.communicate(timeout=seconds + 60)[0])
        pairs.append((baseline, measured))
    return {
        "ours_qps": spread([ours["qps"] for _, ours in pairs]),
        "baseline_qps": spread([base["qps"] for base, _ in pairs]),
        "ratio": spread([ours["qps"] / base["qps"] for base, ours in pairs]),
        "errors": sum(ours["errors"] for _, ours in pairs),
    }


def bench_memory(workdir: Path, counts: list[int]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for count in counts:
        with service(workdir) as ours:
            before = ours.rss_mb()
            holder = clients("idle", ours.grpc_target, count, 600)
            assert holder.stdout is not None
            holder.stdout.readline()  # "open"
            time.sleep(2)
            after = ours.rss_mb()
            holder.kill()
            holder.communicate()
        results[str(count)] = {
            "rss_before_mb": before,
            "rss_with_subscribers_mb": after,
            "kb_per_subscriber": (after - before) * 1024 / count,
        }
    return results


def bench_soak(
    workdir: Path, seconds: float, rate: float = 500.0, subscribers: int = 100, watch_all: int = 5
) -> dict[str, Any]:
    """Each callback belongs to one of ``subscribers - watch_all`` campaigns, each watched by one stream; the other
    ``watch_all`` streams watch every campaign. (100 streams of every campaign at 500/s would be 50 000
    deliveries/s, more than Python clients on the same two cores can read: they would all be catching up.)"""
    campaigns = subscribers - watch_all
    samples: list[tuple[float, float]] = []
    with service(workdir) as ours:
        subscriber = clients("subscribe", ours.grpc_target, subscribers, seconds + 5, str(campaigns))
        assert subscriber.stderr is not None
        subscriber.stderr.readline()
        with Poster(ours.http_port, rate, seconds, campaigns) as poster:
            start = time.monotonic()
            samples.append((0.0, ours.rss_mb()))
            while poster.wait(min(30.0, max(1.0, seconds / 20))):
                samples.append((round(time.monotonic() - start, 1), ours.rss_mb()))
            samples.append((round(time.monotonic() - start, 1), ours.rss_mb()))
        delivered = json.loads(subscriber.communicate(timeout=120)[0])
    warm = samples[len(samples) // 4][1]
    return {
        "seconds": seconds,
        "rate": rate,
        "subscribers": subscribers,
        "watch_all": watch_all,
        "sent": poster.sent,
        "failed": poster.failed,
        "deliveries": delivered["deliveries"],
        "expected_deliveries": poster.sent * (1 + watch_all),
        "latency_p99_ms": delivered["p99_ms"],
        "rss_mb": samples,
        "rss_growth_after_warmup_mb": samples[-1][1] - warm,
    }


def bench_cross_instance(workdir: Path, database: str, seconds: float, rounds: int) -> dict[str, Any]:
    """Publish-to-receive latency on PostgreSQL when the stream is on the instance that took the callback, and
    when it is on another (the update reaches it through NOTIFY and a read), callbacks at 50/s."""
    results: dict[str, list[dict[str, float]]] = {"same_instance": [], "other_instance": []}
    with service(workdir, database=database) as taker, service(workdir, database=database) as other:
        for _ in range(rounds):
            results["same_instance"].append(subscribers_against(taker.grpc_target, 1, seconds, (taker.http_port, 50.0)))
            results["other_instance"].append(
                subscribers_against(other.grpc_target, 1, seconds, (taker.http_port, 50.0))
            )
    return {
        where: {key: spread([run[key] for run in runs]) for key in ("p50_ms", "p99_ms", "per_second")}
        | {"rounds": runs}
        for where, runs in results.items()
    } | {
        "p99_ratio": statistics.median(
            o["p99_ms"] / s["p99_ms"] for s, o in zip(results["same_instance"], results["other_instance"], strict=True)
        )
    }
