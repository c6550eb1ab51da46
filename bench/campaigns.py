"""Campaign questions on a campaign of a million messages: GetCampaignSummary latency next to GetMessageStatus on
the same server (a single-row read: the baseline), and ListMessageStatuses pages per second."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import ROOT, clients, service, spread
from routee.callbacks.v1 import callback_pb2 as pb
from service.store import AppendStatus, open_store

CAMPAIGN = "bench-campaign"
#: Current statuses in about the shares a real campaign ends with.
SHARES = (
    ("Delivered", pb.MESSAGE_STATUS_DELIVERED, 0.45),
    ("Seen", pb.MESSAGE_STATUS_SEEN, 0.30),
    ("Failed", pb.MESSAGE_STATUS_FAILED, 0.10),
    ("Queued", pb.MESSAGE_STATUS_QUEUED, 0.05),
    ("Undelivered", pb.MESSAGE_STATUS_UNDELIVERED, 0.05),
    ("Expired", pb.MESSAGE_STATUS_EXPIRED, 0.05),
)


def fill(database: str, messages: int, batch: int = 5000) -> float:
    """Store one callback for each of ``messages`` messages of CAMPAIGN through the store's own write path;
    return the seconds it took."""

    async def run() -> None:
        store = open_store(database, synchronous="NORMAL")
        store.open()
        rng = random.Random(1)
        names = [name for name, _, _ in SHARES]
        weights = [share for _, _, share in SHARES]
        statuses = {name: status for name, status, _ in SHARES}
        base = 1_714_557_600
        try:
            for start in range(0, messages, batch):
                jobs = []
                for index in range(start, min(messages, start + batch)):
                    name = rng.choices(names, weights)[0]
                    callback = pb.ViberCallback(
                        tracking_id=f"m{index:08d}",
                        campaign_tracking_id=CAMPAIGN,
                        recipient="+306900000000",
                        status=pb.CallbackStatus(status=statuses[name], name=name),  # type: ignore[arg-type]
                        raw_json="{}",
                    )
                    callback.status.update_time.FromSeconds(base + index // 100)
                    jobs.append(AppendStatus(callback))
                await store.write(jobs, int(time.time() * 1_000_000))
        finally:
            await store.close()

    started = time.monotonic()
    asyncio.run(run())
    return time.monotonic() - started


def _client(*args: str, seconds: float) -> dict[str, float]:
    proc = clients(*args)  # type: ignore[arg-type]
    result: dict[str, float] = json.loads(proc.communicate(timeout=seconds + 60)[0])
    return result


def bench_campaigns(workdir: Path, databases: dict[str, str], messages: int, seconds: float, rounds: int) -> Any:
    """For each engine: fill, then per round the summary's and a point read's latency and list pages per second."""
    results: dict[str, Any] = {"messages": messages}
    for engine, database in databases.items():
        filled = fill(database, messages)
        with service(workdir, database=database) as ours:
            runs = []
            for _ in range(rounds):
                target = ours.grpc_target
                summary = _client("latency", target, "summary", str(seconds), CAMPAIGN, seconds=seconds)
                point = _client("latency", target, "status", str(seconds), "m00000042", seconds=seconds)
                pages = _client("pages", target, "100", str(seconds), CAMPAIGN, seconds=seconds)
                failed = _client(
                    "pages", target, "100", str(seconds), CAMPAIGN, str(pb.MESSAGE_STATUS_FAILED), seconds=seconds
                )
                # The whole campaign's snapshot, with a point read and list pages beside it (a large but legal
                # stream must not slow other callers).
                reader = subprocess.Popen(
                    [sys.executable, "-m", "bench.grpc_clients", "snapshot", target, CAMPAIGN],
                    stdout=subprocess.PIPE, text=True, cwd=ROOT,
                )  # fmt: skip
                beside = _client("latency", target, "status", str(seconds), "m00000042", seconds=seconds)
                pages_beside = _client("pages", target, "100", str(seconds), CAMPAIGN, seconds=seconds)
                whole: dict[str, float] = json.loads(reader.communicate(timeout=600)[0])
                runs.append({
                    "summary": summary, "point_read": point, "pages_100": pages, "pages_100_failed": failed,
                    "snapshot": whole, "point_read_beside_snapshot": beside, "pages_100_beside_snapshot": pages_beside,
                })  # fmt: skip
        results[engine] = {
            "fill_seconds": round(filled, 1),
            "summary_p50_ms": spread([run["summary"]["p50_ms"] for run in runs]),
            "summary_p99_ms": spread([run["summary"]["p99_ms"] for run in runs]),
            "point_read_p99_ms": spread([run["point_read"]["p99_ms"] for run in runs]),
            "summary_to_point_read_p99": spread(
                [run["summary"]["p99_ms"] / run["point_read"]["p99_ms"] for run in runs]
            ),
            "pages_per_second": spread([run["pages_100"]["pages_per_second"] for run in runs]),
            "failed_pages_per_second": spread([run["pages_100_failed"]["pages_per_second"] for run in runs]),
            "snapshot_seconds": spread([run["snapshot"]["seconds"] for run in runs]),
            "snapshot_items": spread([run["snapshot"]["items"] for run in runs]),
            "point_read_p99_ms_beside_snapshot": spread([run["point_read_beside_snapshot"]["p99_ms"] for run in runs]),
            "pages_per_second_beside_snapshot": spread(
                [run["pages_100_beside_snapshot"]["pages_per_second"] for run in runs]
            ),
            "rounds": runs,
        }
    return results
