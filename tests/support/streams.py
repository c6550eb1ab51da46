"""Reading the service's streams the way a client does."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc

from routee.callbacks.v1 import message_status_service_pb2 as pb2
from routee.callbacks.v1 import message_status_service_pb2_grpc as pb2_grpc


class StreamCollector:
    """Reads a StreamStatusUpdates (or StreamInboundMessages) stream on a thread and keeps every item."""

    def __init__(
        self,
        target: str,
        request: pb2.StreamStatusUpdatesRequest | pb2.StreamInboundMessagesRequest,
        *,
        own_connection: bool = False,
    ) -> None:
        # Channels of one process share their TCP connections unless told not to (gRPC's global subchannel pool).
        options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
        self._channel = grpc.insecure_channel(target, options=options)
        stub = pb2_grpc.MessageStatusServiceStub(self._channel)
        if isinstance(request, pb2.StreamInboundMessagesRequest):
            self._call = stub.StreamInboundMessages(request)
        else:
            self._call = stub.StreamStatusUpdates(request)
        self.items: list[Any] = []
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._call.initial_metadata()  # The subscription is registered once headers arrive.
        self._thread.start()

    def _read(self) -> None:
        try:
            for item in self._call:
                self.items.append(item)
        except grpc.RpcError as ex:
            self.error = ex

    @property
    def updates(self) -> list[Any]:
        """The status updates (or inbound messages) received so far."""
        return [
            getattr(item, kind)
            for item in list(self.items)
            if (kind := item.WhichOneof("item")) in ("status_update", "inbound_message")
        ]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Any]:
        """Wait until ``count`` updates arrived; fail with what arrived otherwise."""
        end = time.monotonic() + timeout
        while len(self.updates) < count and time.monotonic() < end and self._thread.is_alive():
            time.sleep(0.01)
        assert len(self.updates) >= count, f"{len(self.updates)} of {count} updates arrived: {self.updates}"
        return self.updates

    def close(self) -> None:
        """Cancel the stream and close the channel."""
        self._call.cancel()
        self._thread.join(5)
        self._channel.close()


def stored_head(target: str) -> int:
    """The last sequence a service has stored (from the end of a snapshot)."""
    with grpc.insecure_channel(target) as channel:
        call = pb2_grpc.MessageStatusServiceStub(channel).StreamStatusUpdates(
            pb2.StreamStatusUpdatesRequest(include_snapshot=True), timeout=20
        )
        head: int = next(item.snapshot_end.sequence for item in call if item.HasField("snapshot_end"))
        call.cancel()
        return head
