"""The gRPC API: the servicer's RPCs (``servicer``), following a stream (``following``), the fan-out of
committed entries to streams (``broker``), their presentation as protobuf (``convert``), page tokens and the
server (``server``).

It may import ``service.log`` and everything below it.
"""
