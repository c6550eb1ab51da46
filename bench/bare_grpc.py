"""The gRPC baselines: a bare grpc.aio server with the same API, an asyncio fan-out and a fixed unary answer.

Run: python -m bench.bare_grpc PORT PUBLISH_RATE. It publishes pre-built updates at PUBLISH_RATE per second
(receive_time = now) to every open stream, with no store, and answers GetMessageStatus with one pre-built message.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

from routee.callbacks.v1 import callback_pb2 as pb
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from routee.callbacks.v1 import message_status_service_pb2_grpc as pb2_grpc
from service.api.servicer import method_handlers


class BareServicer(pb2_grpc.MessageStatusServiceServicer):
    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[bytes]] = set()
        self.answer = pb2.GetMessageStatusResponse(
            tracking_id="bench", status=pb.MESSAGE_STATUS_SEEN, status_name="Seen", sequence=3
        )
        self.answer.callback.tracking_id = "bench"
        self.answer.callback.raw_json = "{}" * 300
        self.answer.events.add(status=pb.MESSAGE_STATUS_QUEUED, status_name="Queued", sequence=1)
        self.answer.events.add(status=pb.MESSAGE_STATUS_SEEN, status_name="Seen", sequence=3)

    async def GetMessageStatus(self, request: Any, context: Any) -> pb2.GetMessageStatusResponse:  # noqa: N802
        return self.answer

    async def StreamStatusUpdates(self, request: Any, context: Any) -> AsyncIterator[bytes]:  # noqa: N802
        queue: asyncio.Queue[bytes] = asyncio.Queue(1024)
        self.queues.add(queue)
        try:
            await context.send_initial_metadata(())
            while True:
                yield await queue.get()
        finally:
            self.queues.discard(queue)

    async def publish_forever(self, rate: float) -> None:
        sequence = 0
        callback = pb.ViberCallback(tracking_id="bench", raw_json="{}" * 300)
        while True:
            await asyncio.sleep(1 / rate)
            sequence += 1
            update = pb2.StatusUpdate(sequence=sequence, tracking_id="bench", callback=callback, is_current=True)
            update.receive_time.GetCurrentTime()
            payload = pb2.StreamStatusUpdatesResponse(status_update=update).SerializeToString()
            for queue in self.queues:
                if not queue.full():
                    queue.put_nowait(payload)


async def main(port: int, rate: float) -> None:
    servicer = BareServicer()
    # As in service.api.server: a burst of 10 000 new streams must not be cancelled by gRPC core's pending-call limits.
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.server.max_pending_requests", 21_000),
        ("grpc.server.max_pending_requests_hard_limit", 43_000),
    ]
    server = grpc.aio.server(options=options)
    # The service's own handler table (pre-serialized stream items), so only what sits behind it differs.
    server.add_generic_rpc_handlers((method_handlers(servicer),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    publisher = asyncio.create_task(servicer.publish_forever(rate)) if rate > 0 else None
    print("ready", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        if publisher:
            publisher.cancel()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
