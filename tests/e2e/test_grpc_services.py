"""End to end: the standard gRPC services a tool like grpcurl relies on."""

from __future__ import annotations

import signal
import threading

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import StartService
from support.service_process import OPEN

pytestmark = pytest.mark.e2e

SERVICE = "routee.callbacks.v1.MessageStatusService"


class TestStandardServices:
    """Reflection and health."""

    def test_reflection_lists_and_describes_the_service(self, start_service: StartService) -> None:
        """Reflection lists the services and serves the descriptors, as grpcurl list/describe use them."""
        service = start_service(*OPEN)
        with grpc.insecure_channel(service.grpc_target) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            requests = [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
            ]
            listing, described = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
        names = {entry.name for entry in listing.list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in described.file_descriptor_response.file_descriptor_proto
        ]
        methods = {method.name for file in files for svc in file.service for method in svc.method}
        assert methods == {
            "GetMessageStatus",
            "BatchGetMessageStatuses",
            "ListMessageStatuses",
            "GetCampaignSummary",
            "StreamStatusUpdates",
            "StreamInboundMessages",
        }

    def test_health_serving_then_not_serving_on_sigterm(self, start_service: StartService) -> None:
        """Health is SERVING overall and for the service; SIGTERM turns it NOT_SERVING before the server stops."""
        service = start_service(*OPEN, "--shutdown-grace", "2")
        seen: list[int] = []
        with grpc.insecure_channel(service.grpc_target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for name in ("", SERVICE):
                check = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert check.status == health_pb2.HealthCheckResponse.SERVING
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE))

            def read() -> None:
                try:
                    for item in watch:
                        seen.append(item.status)
                except grpc.RpcError:
                    pass

            reader = threading.Thread(target=read)
            reader.start()
            assert watch.initial_metadata() is not None
            assert service.stop(signal.SIGTERM) == 0
            reader.join(10)
        assert seen[0] == health_pb2.HealthCheckResponse.SERVING
        assert seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
