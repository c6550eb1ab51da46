"""Calls both RPCs with the generated client.

    python example.py HOST:PORT TRACKING_ID                          # plain gRPC (a mesh, a local try)
    python example.py HOST:PORT TRACKING_ID CA.crt                   # TLS: the server's certificate is checked
    python example.py HOST:PORT TRACKING_ID CA.crt CLIENT.crt CLIENT.key   # mutual TLS (--grpc-client-ca)

Prints one JSON line: the message's current status, then the first streamed update (replayed from sequence 0).
"""

import json
import sys
from pathlib import Path

import grpc

from routee.callbacks.v1 import callback_pb2, message_status_service_pb2, message_status_service_pb2_grpc

target, tracking_id, *tls_files = sys.argv[1:]


def open_channel() -> grpc.Channel:
    if not tls_files:
        return grpc.insecure_channel(target)
    ca, cert, key = ([Path(name).read_bytes() for name in tls_files] + [None, None])[:3]
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(target, credentials)


with open_channel() as channel:
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
