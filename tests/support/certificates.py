"""Certificates made by the repository's own script, and what clients need to use them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import grpc

CERTIFICATES_SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "tls" / "make-certificates.sh"


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
