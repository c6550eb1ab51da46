"""Load-generating gRPC clients, run as their own process so they do not share the server's event loop.

python -m bench.grpc_clients subscribe TARGET N SECONDS [K] -> JSON {deliveries, per_second, p50_ms, p99_ms}
    (with K, stream i < K watches campaign "campaign-i" and the others every campaign)
python -m bench.grpc_clients idle TARGET N SECONDS       -> opens N streams, prints "open", holds them
python -m bench.grpc_clients unary TARGET CONCURRENCY SECONDS TRACKING_ID -> JSON {calls, qps, errors}
python -m bench.grpc_clients latency TARGET RPC SECONDS ARG -> JSON {calls, p50_ms, p99_ms, max_ms}
    (one call at a time; RPC "summary" asks GetCampaignSummary of campaign ARG, "status" GetMessageStatus of ARG)
python -m bench.grpc_clients pages TARGET PAGE_SIZE SECONDS CAMPAIGN [STATUS] -> JSON {pages, pages_per_second,
    messages_per_second} (ListMessageStatuses, page after page, starting over at the end)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import grpc

from routee.callbacks.v1 import message_status_service_pb2 as pb2
from routee.callbacks.v1 import message_status_service_pb2_grpc as pb2_grpc

STREAMS_PER_CHANNEL = 100


def _channels(target: str, streams: int) -> list[grpc.aio.Channel]:
    count = max(1, -(-streams // STREAMS_PER_CHANNEL))
    # Distinct channel arguments keep gRPC from sharing one connection among them.
    return [grpc.aio.insecure_channel(target, options=[("bench.channel", index)]) for index in range(count)]


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def subscribe(target: str, streams: int, seconds: float, campaigns: int = 0) -> dict[str, float]:
    channels = _channels(target, streams)
    stubs = [pb2_grpc.MessageStatusServiceStub(channel) for channel in channels]
    calls = [
        stubs[index % len(stubs)].StreamStatusUpdates(
            pb2.StreamStatusUpdatesRequest(campaign_tracking_id=f"campaign-{index}" if index < campaigns else "")
        )
        for index in range(streams)
    ]
    await asyncio.gather(*(call.initial_metadata() for call in calls))
    print("subscribed", file=sys.stderr, flush=True)
    # Only updates stored within [start, end] count; a second more lets those in flight arrive.
    received: list[tuple[float, float]] = []
    start = time.time()
    end = start + seconds

    async def read(call: grpc.aio.UnaryStreamCall) -> None:
        while True:
            item = await call.read()
            if item is grpc.aio.EOF:
                return
            if item.HasField("status_update"):
                stored = item.status_update.receive_time.ToNanoseconds() / 1e9
                received.append((stored, time.time() - stored))

    readers = [asyncio.create_task(read(call)) for call in calls]
    await asyncio.sleep(max(0.0, end + 1 - time.time()))
    for call in calls:
        call.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    for channel in channels:
        await channel.close()
    latencies = [latency for stored, latency in received if start <= stored <= end]
    return {
        "deliveries": len(latencies),
        "per_second": len(latencies) / seconds,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
    }


async def idle(target: str, streams: int, seconds: float) -> None:
    channels = _channels(target, streams)
    stubs = [pb2_grpc.MessageStatusServiceStub(channel) for channel in channels]
    calls = [
        stubs[index % len(stubs)].StreamStatusUpdates(pb2.StreamStatusUpdatesRequest()) for index in range(streams)
    ]
    await asyncio.gather(*(call.initial_metadata() for call in calls))
    print("open", flush=True)
    await asyncio.sleep(seconds)
    for call in calls:
        call.cancel()


async def unary(target: str, concurrency: int, seconds: float, tracking_id: str) -> dict[str, float]:
    channel = grpc.aio.insecure_channel(target)
    stub = pb2_grpc.MessageStatusServiceStub(channel)
    request = pb2.GetMessageStatusRequest(tracking_id=tracking_id)
    calls = errors = 0
    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal calls, errors
        while time.monotonic() < end:
            try:
                await stub.GetMessageStatus(request, timeout=5)
                calls += 1
            except grpc.aio.AioRpcError:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await channel.close()
    return {"calls": calls, "qps": calls / seconds, "errors": errors}


async def latency(target: str, rpc: str, seconds: float, argument: str) -> dict[str, float]:
    channel = grpc.aio.insecure_channel(target)
    stub = pb2_grpc.MessageStatusServiceStub(channel)
    call: Any
    if rpc == "summary":
        call, request = stub.GetCampaignSummary, pb2.GetCampaignSummaryRequest(campaign_tracking_id=argument)
    else:
        call, request = stub.GetMessageStatus, pb2.GetMessageStatusRequest(tracking_id=argument)
    for _ in range(20):  # Warm the channel and the server's caches.
        await call(request, timeout=5)
    timings: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        await call(request, timeout=5)
        timings.append(time.perf_counter() - started)
    await channel.close()
    return {
        "calls": len(timings),
        "p50_ms": _percentile(timings, 0.50) * 1000,
        "p99_ms": _percentile(timings, 0.99) * 1000,
        "max_ms": max(timings) * 1000,
    }


async def pages(target: str, size: int, seconds: float, campaign: str, status: int | None) -> dict[str, float]:
    channel = grpc.aio.insecure_channel(target)
    stub = pb2_grpc.MessageStatusServiceStub(channel)
    request = pb2.ListMessageStatusesRequest(campaign_tracking_id=campaign, page_size=size)
    if status is not None:
        request.statuses.append(status)  # type: ignore[arg-type]
    count = messages = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        page = await stub.ListMessageStatuses(request, timeout=10)
        count += 1
        messages += len(page.messages)
        request.page_token = page.next_page_token  # Empty at the end: start over.
    elapsed = time.monotonic() - started
    await channel.close()
    return {"pages": count, "pages_per_second": count / elapsed, "messages_per_second": messages / elapsed}


async def snapshot(target: str, campaign: str) -> dict[str, float]:
    """Read a campaign's whole snapshot (up to its end marker): how many items, in how many seconds."""
    channel = grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = pb2_grpc.MessageStatusServiceStub(channel)
    call = stub.StreamStatusUpdates(
        pb2.StreamStatusUpdatesRequest(campaign_tracking_id=campaign, include_snapshot=True)
    )
    started = time.monotonic()
    items = 0
    async for item in call:
        if item.HasField("snapshot_end"):
            break
        items += 1
    elapsed = time.monotonic() - started
    call.cancel()
    await channel.close()
    return {"items": items, "seconds": elapsed, "items_per_second": items / elapsed}


def main() -> None:
    if sys.argv[1] == "latency":
        main_latency()
        return
    if sys.argv[1] == "snapshot":  # snapshot TARGET CAMPAIGN
        print(json.dumps(asyncio.run(snapshot(sys.argv[2], sys.argv[3]))))
        return
    mode, target, count, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    if mode == "subscribe":
        campaigns = int(sys.argv[5]) if len(sys.argv) > 5 else 0
        print(json.dumps(asyncio.run(subscribe(target, count, seconds, campaigns))))
    elif mode == "idle":
        asyncio.run(idle(target, count, seconds))
    elif mode == "unary":
        print(json.dumps(asyncio.run(unary(target, count, seconds, sys.argv[5]))))
    elif mode == "pages":
        status = int(sys.argv[6]) if len(sys.argv) > 6 else None
        print(json.dumps(asyncio.run(pages(target, count, seconds, sys.argv[5], status))))
    else:
        raise SystemExit(f"unknown mode {mode}")


def main_latency() -> None:
    """``latency TARGET RPC SECONDS ARG`` (its third argument is a name, not a count)."""
    target, rpc, seconds, argument = sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
    print(json.dumps(asyncio.run(latency(target, rpc, seconds, argument))))


if __name__ == "__main__":
    main()
