"""Helpers shared by the tests: fixtures on disk, free ports, HTTP from chosen source addresses, a real DNS server,
and the real ``routee-callbacks serve`` process."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import DNSError, DNSLogger, DNSServer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from routee.callbacks.v1 import message_status_service_pb2 as pb2
from routee.callbacks.v1 import message_status_service_pb2_grpc as pb2_grpc

FIXTURES = Path(__file__).parent / "fixtures" / "viber"
INBOUND_FIXTURES = Path(__file__).parent / "fixtures" / "viber_inbound"
CALLBACKS_PATH = "/v1/callbacks/viber"
INBOUND_PATH = "/v1/callbacks/viber/inbound"
# serve options for tests that are not about the allowlist: no DNS, every loopback address may post.
OPEN = ("--allowlist-host", "", "--allow-cidr", "127.0.0.0/8")


def fixture_bodies() -> dict[str, bytes]:
    """Every fixture callback by file name."""
    return {path.name: path.read_bytes() for path in sorted(FIXTURES.glob("*.json"))}


def inbound_bodies() -> dict[str, bytes]:
    """Every fixture inbound message (a reply) by file name."""
    return {path.name: path.read_bytes() for path in sorted(INBOUND_FIXTURES.glob("*.json"))}


def fixture(name: str) -> dict[str, Any]:
    """One fixture callback, parsed."""
    result: dict[str, Any] = json.loads((FIXTURES / name).read_bytes())
    return result


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class HttpResult:
    """An HTTP answer."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body, parsed as JSON."""
        return json.loads(self.body)


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    source: str | None = None,
    host: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    context: ssl.SSLContext | None = None,
) -> HttpResult:
    """Send one request, from the ``source`` address when given; over TLS with ``context``."""
    source_address = (source, 0) if source else None
    connection = (
        http.client.HTTPConnection(host, port, timeout=timeout, source_address=source_address)
        if context is None
        else http.client.HTTPSConnection(host, port, timeout=timeout, source_address=source_address, context=context)
    )
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return HttpResult(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def post_callback(
    port: int, body: bytes, *, source: str = "127.0.0.1", host: str = "127.0.0.1", **headers: str
) -> HttpResult:
    """POST a callback body as Routee does, from ``source`` to ``host``; header names use ``_`` for ``-``."""
    all_headers = {"Content-Type": "application/json", **{k.replace("_", "-"): v for k, v in headers.items()}}
    return http_request(port, "POST", CALLBACKS_PATH, body, source=source, host=host, headers=all_headers)


# -- a real DNS server on loopback -------------------------------------------------------------


@dataclass
class Zone:
    """What the test DNS server answers; change it while the test runs."""

    name: str = "callbacksallow.routee.test."
    a: list[str] = field(default_factory=list)
    aaaa: list[str] = field(default_factory=list)
    ttl: int = 1
    mode: str = "ok"  # ok | servfail | nxdomain | silent
    queries: int = 0

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        """Answer one query according to the zone's current state."""
        self.queries += 1
        if self.mode == "silent":
            raise DNSError("silent on purpose")
        reply = request.reply()
        if self.mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if self.mode == "nxdomain" or str(request.q.qname) != self.name:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if request.q.qtype == QTYPE.A:
            for address in self.a:
                reply.add_answer(RR(self.name, QTYPE.A, rdata=A(address), ttl=self.ttl))
        elif request.q.qtype == QTYPE.AAAA:
            for address in self.aaaa:
                reply.add_answer(RR(self.name, QTYPE.AAAA, rdata=AAAA(address), ttl=self.ttl))
        return reply


class _QuietLogger(DNSLogger):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(log="-recv,-send,-request,-reply,-truncated,-error,-data", logf=lambda _: None)


@contextlib.contextmanager
def dns_server(zone: Zone) -> Iterator[int]:
    """Serve ``zone`` on 127.0.0.1 over UDP and TCP on one free port; yield the port."""
    for _ in range(20):
        port = free_port()
        try:
            servers = [
                DNSServer(zone, address="127.0.0.1", port=port, logger=_QuietLogger()),
                DNSServer(zone, address="127.0.0.1", port=port, tcp=True, logger=_QuietLogger()),
            ]
            break
        except OSError:
            continue
    else:
        raise RuntimeError("no free port for the DNS server")
    for server in servers:
        server.start_thread()
    try:
        yield port
    finally:
        for server in servers:
            server.stop()
            server.server.server_close()


# -- the real service process ------------------------------------------------------------------


# -- certificates, made with the repository's own script ---------------------------------------

CERTIFICATES_SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "tls" / "make-certificates.sh"


def make_certificates(directory: Path, *, rotate: bool = False) -> Path:
    """A CA, a server certificate (localhost, 127.0.0.1, ::1) and a client certificate in ``directory``;
    ``rotate`` renews only the server certificate."""
    env = {**os.environ, "ROTATE": "1"} if rotate else dict(os.environ)
    subprocess.run(["bash", str(CERTIFICATES_SCRIPT), str(directory)], check=True, capture_output=True, env=env)
    return directory


def grpc_tls_options(certificates: Path) -> tuple[str, ...]:
    """serve options for gRPC over mutual TLS with ``certificates``."""
    return (
        "--grpc-tls-cert", str(certificates / "server.crt"), "--grpc-tls-key", str(certificates / "server.key"),
        "--grpc-client-ca", str(certificates / "ca.crt"),
    )  # fmt: skip


def grpc_client_credentials(certificates: Path, *, client: Path | None = None) -> grpc.ChannelCredentials:
    """Channel credentials trusting the CA of ``certificates``, with the client certificate of ``client``."""
    return grpc.ssl_channel_credentials(
        root_certificates=(certificates / "ca.crt").read_bytes(),
        private_key=(client / "client.key").read_bytes() if client else None,
        certificate_chain=(client / "client.crt").read_bytes() if client else None,
    )


#: Names the console script under test: `make test` sets it to the wheel's, installed into a venv of its own.
EXECUTABLE_VARIABLE = "ROUTEE_TEST_EXECUTABLE"


def executable() -> str:
    """The console script under test: the wheel's when ``make test`` says so, else this environment's."""
    return os.environ.get(EXECUTABLE_VARIABLE) or str(Path(sys.executable).with_name("routee-callbacks"))


class ServiceProcess:
    """A running ``routee-callbacks serve``, started the way a user starts it."""

    def __init__(
        self,
        args: list[str],
        *,
        http_host: str,
        http_port: int,
        grpc_port: int,
        log_path: Path,
        env: dict[str, str],
        wrapper: tuple[str, ...] = (),
        http_context: ssl.SSLContext | None = None,
        grpc_credentials: grpc.ChannelCredentials | None = None,
    ):
        self.http_host = "127.0.0.1" if http_host in ("0.0.0.0", "::") else http_host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.log_path = log_path
        self.http_context = http_context
        self.grpc_credentials = grpc_credentials
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [*wrapper, executable(), "serve", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    @property
    def grpc_target(self) -> str:
        """Where its gRPC server listens."""
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        """Everything it printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, deadline: float = 20.0, *, path: str = "/healthz") -> None:
        """Wait until HTTP answers ``path`` with 200 and gRPC answers; fail loudly with its log otherwise."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise AssertionError(f"routee-callbacks exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                answer = http_request(
                    self.http_port, "GET", path, host=self.http_host, timeout=1, context=self.http_context
                )
                if answer.status == 200 and self._grpc_up():
                    return
            time.sleep(0.05)
        raise AssertionError(f"routee-callbacks did not become ready in {deadline}s:\n{self.log()}")

    def channel(self) -> grpc.Channel:
        """A channel to its gRPC server (over TLS when it serves TLS)."""
        if self.grpc_credentials is None:
            return grpc.insecure_channel(self.grpc_target)
        return grpc.secure_channel(self.grpc_target, self.grpc_credentials)

    def _grpc_up(self) -> bool:
        with self.channel() as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
            except grpc.FutureTimeoutError:
                return False
        return True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig`` to the whole process group and wait; kill it if it does not end."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def stub(self, channel: grpc.Channel) -> pb2_grpc.MessageStatusServiceStub:
        """A stub on ``channel``."""
        return pb2_grpc.MessageStatusServiceStub(channel)

    def get_status_from_stream(self) -> str:
        """The tracking id of the first stored update."""
        with self.channel() as channel:
            call = self.stub(channel).StreamStatusUpdates(pb2.StreamStatusUpdatesRequest(after_sequence=0), timeout=10)
            tracking_id: str = next(item.status_update.tracking_id for item in call if item.HasField("status_update"))
            call.cancel()
            return tracking_id

    def get_status(self, tracking_id: str) -> pb2.GetMessageStatusResponse:
        """Call GetMessageStatus once."""
        with self.channel() as channel:
            response: pb2.GetMessageStatusResponse = self.stub(channel).GetMessageStatus(
                pb2.GetMessageStatusRequest(tracking_id=tracking_id), timeout=10
            )
            return response


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


#: Runs a command as root without the capabilities that let root ignore file modes: an unprivileged process as far
#: as permissions go, with no second user account needed (util-linux's setpriv).
WITHOUT_FILE_PRIVILEGES = (
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
    "--",
)


# -- processes, connections and a real load balancer ------------------------------------------------------


def children(pid: int) -> list[int]:
    """The direct children of a process (for the service: its writer process and workers)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def writer_process(service: ServiceProcess) -> int:
    """The pid of a service's writer process (it names itself ``routee-writer``)."""
    return next(
        pid for pid in children(service.process.pid) if Path(f"/proc/{pid}/comm").read_text().strip() == "routee-writer"
    )


def stored_head(target: str) -> int:
    """The last sequence a service has stored (from the end of a snapshot)."""
    with grpc.insecure_channel(target) as channel:
        call = pb2_grpc.MessageStatusServiceStub(channel).StreamStatusUpdates(
            pb2.StreamStatusUpdatesRequest(include_snapshot=True), timeout=20
        )
        head: int = next(item.snapshot_end.sequence for item in call if item.HasField("snapshot_end"))
        call.cancel()
        return head


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


HAPROXY_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "haproxy.cfg"


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
