"""End to end: HTTPS and gRPC over TLS with certificates the tests make with the repository's own script
(docs/tls/make-certificates.sh), client certificates on gRPC, and certificates renewed on disk."""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import StartService
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from support.certificates import grpc_client_credentials, grpc_tls_options, make_certificates
from support.fixtures import fixture_bodies
from support.network import CALLBACKS_PATH, http_request
from support.polling import eventually
from support.service_process import OPEN, ServiceProcess, executable

pytestmark = pytest.mark.e2e

BODY = fixture_bodies()["01-m1-queued.json"]
TRACKING_ID = "a1b2c3d4-0000-4000-8000-000000000001"


def client_context(certificates: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificates / "ca.crt"))


def health_check(service: ServiceProcess, credentials: grpc.ChannelCredentials) -> grpc.StatusCode | None:
    """A health check over a channel of its own: None when it answers, else why it failed."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.secure_channel(service.grpc_target, credentials, options=options) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as ex:
            return ex.code()
    return None


def served_serial(port: int, context: ssl.SSLContext, *, alpn: list[str] | None = None) -> int:
    """The serial number of the certificate a new TLS connection to ``port`` is given."""
    if alpn:
        context.set_alpn_protocols(alpn)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(subprocess.run(
        ["openssl", "x509", "-inform", "der", "-noout", "-serial"], input=der, capture_output=True, check=True
    ).stdout.decode().strip().split("=")[1], 16)  # fmt: skip


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    return make_certificates(tmp_path / "tls")


@pytest.fixture
def tls_service(start_service: StartService, certificates: Path) -> ServiceProcess:
    """The service with HTTPS, gRPC over TLS and client certificates required."""
    return start_service(
        *OPEN,
        "--http-tls-cert", str(certificates / "server.crt"), "--http-tls-key", str(certificates / "server.key"),
        *grpc_tls_options(certificates),
        http_context=client_context(certificates),
        grpc_credentials=grpc_client_credentials(certificates, client=certificates),
    )  # fmt: skip


class TestHttps:
    """The callback endpoint over TLS."""

    def test_an_https_callback_is_kept(self, tls_service: ServiceProcess, certificates: Path) -> None:
        """A callback over HTTPS gets 200 and its status is served (over gRPC with TLS)."""
        answer = http_request(
            tls_service.http_port,
            "POST",
            CALLBACKS_PATH,
            BODY,
            headers={"Content-Type": "application/json"},
            context=client_context(certificates),
        )
        assert (answer.status, answer.json()["status"]) == (200, "accepted")
        with tls_service.channel() as channel:
            status = tls_service.stub(channel).GetMessageStatus(pb2.GetMessageStatusRequest(tracking_id=TRACKING_ID))
        assert status.status_name == "Queued"

    def test_plain_http_to_the_tls_port_gets_no_200(self, tls_service: ServiceProcess) -> None:
        """Plain HTTP fails the TLS handshake: no answer, let alone a 200."""
        with pytest.raises((OSError, http.client.HTTPException)):
            http_request(
                tls_service.http_port, "POST", CALLBACKS_PATH, BODY, headers={"Content-Type": "application/json"}
            )

    def test_only_tls_1_2_and_newer(self, tls_service: ServiceProcess, certificates: Path) -> None:
        """A client that offers TLS 1.1 at most is refused; TLS 1.2 is served (openssl s_client, both ways)."""

        def handshake(*version: str) -> bool:
            result = subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{tls_service.http_port}", *version,
                 "-CAfile", str(certificates / "ca.crt"), "-cipher", "DEFAULT:@SECLEVEL=0"],
                input=b"", capture_output=True, timeout=10,
            )  # fmt: skip
            return b"Cipher is (NONE)" not in result.stdout and b"Verify return code: 0 (ok)" in result.stdout

        assert handshake("-tls1_2")
        assert not handshake("-tls1_1")


class TestHttpsDoor:
    """Strangers get no handshake at all; an allowed peer that never finishes its handshake is cut off."""

    def test_a_stranger_gets_no_handshake(self, start_service: StartService, certificates: Path) -> None:
        service = start_service(
            "--allowlist-host", "", "--allow-cidr", "127.0.0.1/32", "--monitor-cidr", "127.0.0.1/32",
            "--http-tls-cert", str(certificates / "server.crt"), "--http-tls-key", str(certificates / "server.key"),
            http_context=client_context(certificates),
        )  # fmt: skip
        with socket.create_connection(("127.0.0.1", service.http_port), source_address=("127.0.2.9", 0)) as raw:
            raw.settimeout(5)
            with pytest.raises((ssl.SSLError, ConnectionError)):
                client_context(certificates).wrap_socket(raw, server_hostname="localhost")
        assert served_serial(service.http_port, client_context(certificates)) > 0  # 127.0.0.1 is served.

    def test_a_stalled_handshake_is_cut_off(self, start_service: StartService, certificates: Path) -> None:
        service = start_service(
            *OPEN, "--header-timeout", "1",
            "--http-tls-cert", str(certificates / "server.crt"), "--http-tls-key", str(certificates / "server.key"),
            http_context=client_context(certificates),
        )  # fmt: skip
        with socket.create_connection(("127.0.0.1", service.http_port), timeout=10) as raw:
            started = time.monotonic()
            raw.sendall(b"\x16\x03\x01")  # The first bytes of a ClientHello, then nothing.
            assert raw.recv(65536) == b""  # Closed by the server, unanswered.
            assert 0.9 < time.monotonic() - started < 2.0


class TestGrpcMutualTls:
    """gRPC requires a client certificate signed by --grpc-client-ca; health follows the same rule."""

    def test_a_client_certificate_from_the_ca_is_admitted(
        self, tls_service: ServiceProcess, certificates: Path
    ) -> None:
        assert health_check(tls_service, grpc_client_credentials(certificates, client=certificates)) is None

    def test_without_a_client_certificate_the_handshake_fails(
        self, tls_service: ServiceProcess, certificates: Path
    ) -> None:
        assert health_check(tls_service, grpc_client_credentials(certificates)) == grpc.StatusCode.UNAVAILABLE

    def test_a_certificate_from_another_ca_is_refused(
        self, tls_service: ServiceProcess, certificates: Path, tmp_path: Path
    ) -> None:
        stranger = make_certificates(tmp_path / "other-ca")
        assert (
            health_check(tls_service, grpc_client_credentials(certificates, client=stranger))
            == grpc.StatusCode.UNAVAILABLE
        )

    def test_the_command_line_speaks_tls(self, tls_service: ServiceProcess, certificates: Path) -> None:
        """`status` with --tls-ca, --tls-cert and --tls-key reads a message over mutual TLS."""
        http_request(
            tls_service.http_port,
            "POST",
            CALLBACKS_PATH,
            BODY,
            headers={"Content-Type": "application/json"},
            context=client_context(certificates),
        )
        result = subprocess.run(
            [
                executable(), "status", TRACKING_ID, "--grpc-target", tls_service.grpc_target,
                "--tls-ca", str(certificates / "ca.crt"),
                "--tls-cert", str(certificates / "client.crt"), "--tls-key", str(certificates / "client.key"),
            ],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "QUEUED (Queued)" in result.stdout


class TestRotation:
    """Certificates renewed on disk are served to new connections, without a restart."""

    def test_a_renewed_certificate_is_served_on_both_ports(
        self, tls_service: ServiceProcess, certificates: Path
    ) -> None:
        https_before = served_serial(tls_service.http_port, client_context(certificates))
        grpc_context = client_context(certificates)
        grpc_context.load_cert_chain(certificates / "client.crt", certificates / "client.key")
        grpc_before = served_serial(tls_service.grpc_port, grpc_context, alpn=["h2"])
        assert https_before == grpc_before
        make_certificates(certificates, rotate=True)
        renewed = int(
            subprocess.run(
                ["openssl", "x509", "-in", str(certificates / "server.crt"), "-noout", "-serial"],
                capture_output=True, check=True, text=True,
            ).stdout.strip().split("=")[1], 16,
        )  # fmt: skip
        assert renewed != https_before
        eventually(
            lambda: served_serial(tls_service.http_port, client_context(certificates)) == renewed,
            "HTTPS did not serve the renewed certificate",
        )
        eventually(
            lambda: served_serial(tls_service.grpc_port, grpc_context, alpn=["h2"]) == renewed,
            "gRPC did not serve the renewed certificate",
        )
        assert tls_service.process.poll() is None, "no restart"
