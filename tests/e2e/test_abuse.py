"""Clients that misbehave on purpose: strangers by the thousand under a small open-files limit, idle, slow and
trickling HTTP connections, streams opened and dropped by the thousand. (Oversized gRPC requests, streams past
the limit and malformed filters: tests/component/test_grpc.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from conftest import StartService
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from routee.callbacks.v1 import message_status_service_pb2_grpc as pb2_grpc
from support.fixtures import fixture
from support.network import CALLBACKS_PATH, http_request, post_callback
from support.polling import eventually
from support.service_process import OPEN, ServiceProcess, children, writer_process

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def open_sockets(port: int, count: int, first_bytes: bytes) -> Iterator[list[socket.socket]]:
    """``count`` connections that send ``first_bytes`` and then nothing more, from several source addresses."""
    sockets = []
    try:
        for index in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(f"127.0.1.{index % 8}", 0))
            if first_bytes:
                sock.sendall(first_bytes)
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def partial_post(length: int, sent: bytes) -> bytes:
    head = (
        f"POST {CALLBACKS_PATH} HTTP/1.1\r\nHost: routee\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    return head.encode() + sent


def subscribers(service: ServiceProcess) -> float:
    text = http_request(service.http_port, "GET", "/metrics").body.decode()
    match = re.search(r"^routee_callbacks_subscribers (\S+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


JSON_HEADERS = {"Content-Type": "application/json"}
# Only 127.0.0.1 may post (and probe); every other loopback address is a stranger.
ONLY_LOCALHOST = ("--allowlist-host", "", "--allow-cidr", "127.0.0.1/32", "--monitor-cidr", "127.0.0.1/32")


@contextlib.contextmanager
def stranger_connections(port: int, count: int, first_bytes: bytes, deadline: float = 60.0) -> Iterator[int]:
    """``count`` connections from non-allowlisted addresses (127.0.2.x) that send ``first_bytes`` (half a request
    line) and then nothing, held open by this side until the block ends. Yields how many were opened."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < count + 256:
        pytest.skip(f"needs {count + 256} open files in the test process; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count + 256), hard))
    sockets: list[socket.socket] = []
    end = time.monotonic() + deadline
    try:
        for index in range(count):
            if time.monotonic() > end:
                break
            sock = socket.socket()
            sock.bind((f"127.0.2.{index % 200 + 1}", 0))
            sock.settimeout(5)
            with contextlib.suppress(OSError):  # Refused or reset on the spot: that is the point.
                sock.connect(("127.0.0.1", port))
                if first_bytes:
                    sock.sendall(first_bytes)
            sockets.append(sock)
        yield len(sockets)
    finally:
        for sock in sockets:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
class TestStrangers:
    """Issue 12: under ``ulimit -n 1024``, 5 000 strangers that never finish their request cannot stop an allowed
    sender's callback from getting 200 within 2 s; an allowed peer that stalls in its headers is cut off."""

    WRAPPER = ("prlimit", "--nofile=1024:1024", "--")

    @pytest.mark.parametrize("first_bytes", [b"POST /v1/callb", b""], ids=["half-request-line", "silent"])
    def test_thousands_of_strangers_do_not_block_callbacks(
        self, start_service: StartService, first_bytes: bytes
    ) -> None:
        service = start_service(*ONLY_LOCALHOST, wrapper=self.WRAPPER)
        assert '"soft": 1024' in service.log()  # It says what limit it got.
        body = json.dumps(fixture("01-m1-queued.json")).encode()
        with stranger_connections(service.http_port, 5000, first_bytes) as opened:
            assert opened == 5000
            for _ in range(5):
                started = time.monotonic()
                answer = http_request(service.http_port, "POST", CALLBACKS_PATH, body, headers=JSON_HEADERS, timeout=2)
                assert answer.status == 200, answer
                assert time.monotonic() - started < 2.0
        assert service.process.poll() is None
        metrics = http_request(service.http_port, "GET", "/metrics").body.decode()
        refused = re.search(
            r'^routee_callbacks_http_connections_refused_total\{reason="source_not_allowed"\} (\S+)$',
            metrics,
            re.MULTILINE,
        )
        assert refused, metrics
        assert float(refused.group(1)) >= 5000

    def test_a_stranger_gets_403_before_its_request_is_read(self, start_service: StartService) -> None:
        service = start_service(*ONLY_LOCALHOST)
        with socket.create_connection(("127.0.0.1", service.http_port), source_address=("127.0.2.9", 0)) as sock:
            sock.settimeout(5)
            sock.sendall(b"POST /v1/callb")  # Half a request line: the answer does not wait for the rest.
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, problem = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 403"), answer
        assert json.loads(problem)["reason"] == "source_not_allowed"

    def test_half_headers_from_an_allowed_peer_are_cut_off(self, start_service: StartService) -> None:
        service = start_service(*ONLY_LOCALHOST, "--header-timeout", "1")
        with socket.create_connection(("127.0.0.1", service.http_port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(f"POST {CALLBACKS_PATH} HTTP/1.1\r\nHost: routee\r\nContent-Ty".encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            elapsed = time.monotonic() - started
        head, _, problem = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer
        assert json.loads(problem)["reason"] == "header_timeout"
        assert 0.9 < elapsed < 1.8


def worker_rss_kib(service: ServiceProcess) -> int:
    """The resident memory of the service's worker (the child that is not the writer), in KiB."""
    writer = writer_process(service)
    (worker,) = [pid for pid in children(service.process.pid) if pid != writer]
    status = Path(f"/proc/{worker}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def send_until_closed(sock: socket.socket, head: bytes, line: bytes, most: int) -> tuple[int, bytes]:
    """Send ``head``, then ``line`` again and again (at most ``most`` bytes) until the server closes; return how
    much was sent and what the server answered."""
    sent = 0
    sock.sendall(head)
    with contextlib.suppress(OSError):  # A reset once the server has closed.
        while sent < most:
            sock.sendall(line)
            sent += len(line)
    answer = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            answer += chunk
    return sent, answer


class TestHeadLimits:
    """A request head is bounded in bytes and lines, whoever sends it: 431 and the connection closed at once."""

    def test_endless_headers_are_cut_off_at_the_bound_and_memory_stays(self, start_service: StartService) -> None:
        """An allowed peer sending header lines for ever: 431 after about 16 KiB (not after the header timeout),
        and the worker's memory does not grow with what was sent."""
        service = start_service(*ONLY_LOCALHOST)
        before = worker_rss_kib(service)
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", service.http_port), timeout=10) as sock:
                started = time.monotonic()
                sent, answer = send_until_closed(
                    sock,
                    f"POST {CALLBACKS_PATH} HTTP/1.1\r\n".encode(),
                    b"X-Filler: " + b"a" * 1000 + b"\r\n",
                    50 << 20,
                )
                assert time.monotonic() - started < 5
            assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
            assert json.loads(answer.partition(b"\r\n\r\n")[2])["reason"] == "header_too_large"
            assert sent < 50 << 20, "the server read everything"
        assert worker_rss_kib(service) - before < 20 * 1024
        assert post_callback(service.http_port, json.dumps(fixture("01-m1-queued.json")).encode()).status == 200

    @pytest.mark.parametrize(
        ("lines", "head_bytes", "status"),
        [(100, None, 200), (101, None, 431), (4, 16 * 1024, 200), (4, 16 * 1024 + 1, 431)],
        ids=["100-lines", "101-lines", "16384-bytes", "16385-bytes"],
    )
    def test_the_bounds(self, start_service: StartService, lines: int, head_bytes: int | None, status: int) -> None:
        """100 header lines and a head of 16 KiB pass; one line or one byte more does not (a stranger's request
        never gets this far: it is turned away at the door)."""
        service = start_service(*ONLY_LOCALHOST)
        body = json.dumps(fixture("01-m1-queued.json")).encode()
        fixed = [f"POST {CALLBACKS_PATH} HTTP/1.1", "Content-Type: application/json", f"Content-Length: {len(body)}"]
        extra = [f"X-{n}: a" for n in range(lines - len(fixed) + 1)]  # The request line is no header line.
        head = "\r\n".join([*fixed, *extra]).encode() + b"\r\n\r\n"
        if head_bytes is not None:
            head = head[:-4] + b"b" * (head_bytes - len(head)) + b"\r\n\r\n"
            assert len(head) == head_bytes
        assert head.count(b"\r\n") - 2 == lines
        with socket.create_connection(("127.0.0.1", service.http_port), timeout=10) as sock:
            sock.sendall(head + body)
            answer = sock.recv(65536)
        assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer[:200]


class TestSlowHttpClients:
    def test_idle_and_trickling_connections_do_not_delay_others(self, start_service: StartService) -> None:
        """100 idle connections and 100 stalled halfway through a body: callbacks and /healthz answer within 1 s."""
        service = start_service(*OPEN, "--body-timeout", "30")
        body = json.dumps(fixture("01-m1-queued.json")).encode()
        with (
            open_sockets(service.http_port, 100, b""),
            open_sockets(service.http_port, 100, partial_post(len(body), body[:40])),
        ):
            for _ in range(5):
                started = time.monotonic()
                assert http_request(service.http_port, "GET", "/healthz", timeout=1).status == 200
                assert post_callback(service.http_port, body).status == 200
                assert time.monotonic() - started < 1.0

    def test_trickling_body_is_cut_off(self, start_service: StartService) -> None:
        """A body that trickles in (a byte every 0.3 s, then nothing) gets 408 with a problem body once
        --body-timeout has passed since it started, not since its last byte; the connection closes."""
        service = start_service(*OPEN, "--body-timeout", "1.5")
        body = json.dumps({**fixture("01-m1-queued.json"), "trackingId": "trickled"}).encode()
        with socket.create_connection(("127.0.0.1", service.http_port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(partial_post(len(body), b""))
            # Stop before the deadline: bytes still arriving when the server closes would make it reset the
            # connection, and the reset could discard the answer before it is read.
            for byte in body[:4]:
                sock.sendall(bytes([byte]))
                time.sleep(0.3)
            answer = b""
            while chunk := sock.recv(65536):  # The server closes the connection after the answer.
                answer += chunk
                elapsed = time.monotonic() - started
        head, _, problem = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer
        assert b"content-type: application/problem+json" in head.lower()
        assert json.loads(problem)["reason"] == "body_timeout"
        # From the start of the body: 1.5 s. A timeout reset by every byte would answer after 1.2 + 1.5 s.
        assert 1.4 < elapsed < 2.4
        with pytest.raises(grpc.RpcError, match="NOT_FOUND"):
            service.get_status("trickled")


class TestGrpcAbuse:
    def test_thousands_of_dropped_streams_leave_no_subscribers(self, start_service: StartService) -> None:
        """3 000 streams opened, then cancelled or cut with their connection: the subscriber gauge returns to 0."""
        service = start_service(*OPEN)

        async def open_and_drop() -> int:
            channels = [grpc.aio.insecure_channel(service.grpc_target, options=[("i", i)]) for i in range(30)]
            calls = [
                pb2_grpc.MessageStatusServiceStub(channels[index % 30]).StreamStatusUpdates(
                    pb2.StreamStatusUpdatesRequest(after_sequence=0)
                )
                for index in range(3000)
            ]
            await asyncio.gather(*(call.initial_metadata() for call in calls))
            deadline = time.monotonic() + 15
            # The gauge lives in the service's process: polling it is the only way to wait for it.
            while (opened := int(subscribers(service))) < 3000 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            for call in calls[:1500]:
                call.cancel()  # Half end politely ...
            for channel in channels:
                await channel.close(grace=None)  # ... the rest lose their connection.
            return opened

        assert asyncio.run(open_and_drop()) == 3000
        eventually(lambda: subscribers(service) == 0, "every dropped stream's subscription released", interval=0.2)


class TestMonitoringPeers:
    """A monitoring network reads probes and metrics; it cannot send a body."""

    def test_a_monitoring_peer_may_read_but_not_post(self, start_service: StartService) -> None:
        """From a monitoring network that is no sender: GET /readyz answers, a POST (any body) is refused at once
        with 403 before its body is read, and the connection is closed."""
        service = start_service(*ONLY_LOCALHOST, "--monitor-cidr", "127.0.0.8/32")
        assert http_request(service.http_port, "GET", "/readyz", source="127.0.0.8").status == 200
        with socket.create_connection(("127.0.0.1", service.http_port), source_address=("127.0.0.8", 0)) as sock:
            sock.settimeout(10)
            sock.sendall(partial_post(10_000_000, b'{"trackingId": '))
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
        problem = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert problem["reason"] == "source_not_allowed"
        assert "it may read (GET or HEAD, no body)" in problem["detail"]
        get_with_body = b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        with socket.create_connection(("127.0.0.1", service.http_port), source_address=("127.0.0.8", 0)) as sock:
            sock.settimeout(10)
            sock.sendall(get_with_body)
            assert sock.recv(65536).startswith(b"HTTP/1.1 403")
