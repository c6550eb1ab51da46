"""A real load balancer (haproxy, with the repository's configuration) in front of instances."""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support.network import free_port, http_request
from support.service_process import ServiceProcess


def connection_owners(port: int, pids: list[int]) -> dict[int, int]:
    """How many established TCP connections to the local ``port`` each of ``pids`` holds (read from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # 01: ESTABLISHED
                inodes.add(fields[9])
    owners = {}
    for pid in pids:
        count = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                count += target.startswith("socket:[") and target[8:-1] in inodes
        owners[pid] = count
    return owners


def _balancing(http_port: int, grpc_port: int) -> bool:
    with contextlib.suppress(OSError, http.client.HTTPException):
        if http_request(http_port, "GET", "/readyz", timeout=1).status != 200:
            return False
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return bool(check.status == health_pb2.HealthCheckResponse.SERVING)
    return False


HAPROXY_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"


@contextlib.contextmanager
def haproxy(instances: list[ServiceProcess], log_path: Path) -> Iterator[tuple[int, int]]:
    """Run haproxy with the repository's own configuration in front of two instances; yield (http, grpc) ports."""
    http_port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "HTTP_BIND": f"127.0.0.1:{http_port}",
        "GRPC_BIND": f"127.0.0.1:{grpc_port}",
    }
    for number, instance in enumerate(instances, start=1):
        env[f"INSTANCE_{number}_HTTP"] = f"127.0.0.1:{instance.http_port}"
        env[f"INSTANCE_{number}_GRPC"] = f"127.0.0.1:{instance.grpc_port}"
        env[f"INSTANCE_{number}_CHECK_PORT"] = str(instance.http_port)
    with log_path.open("wb") as log:
        process = subprocess.Popen(["haproxy", "-db", "-f", str(HAPROXY_CONFIG)], env=env, stdout=log, stderr=log)
    try:
        end = time.monotonic() + 10
        while not _balancing(http_port, grpc_port):  # Both frontends pass a request to a backend.
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < end, f"haproxy did not come up:\n{log_path.read_text()}"
            time.sleep(0.1)
        yield http_port, grpc_port
    finally:
        process.terminate()
        process.wait(10)
