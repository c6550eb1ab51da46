"""Calls both RPCs with the generated client: python example.py HOST:PORT TRACKING_ID.

Prints one JSON line: the message's current status, then the first streamed update (replayed from sequence 0).
"""

import json
import sys

import grpc

from routee.callbacks.v1 import callback_pb2, message_status_service_pb2, message_status_service_pb2_grpc

target, tracking_id = sys.argv[1:3]
with grpc.insecure_channel(target) as channel:
    stub = message_status_service_pb2_grpc.MessageStatusServiceStub(channel)
    status = stub.GetMessageStatus(message_status_service_pb2.GetMessageStatusRequest(tracking_id=tracking_id))
    stream = stub.StreamStatusUpdates(message_status_service_pb2.StreamStatusUpdatesRequest(after_sequence=0))
    first = next(item.status_update for item in stream if item.HasField("status_update"))
    stream.cancel()
print(
    json.dumps(
        {
            "trackingId": status.tracking_id,
            "status": callback_pb2.MessageStatus.Name(status.status).removeprefix("MESSAGE_STATUS_"),
            "statusName": status.status_name,
            "events": len(status.events),
            "firstSequence": first.sequence,
            "firstTrackingId": first.tracking_id,
        }
    )
)
