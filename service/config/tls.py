"""TLS for both ports, with certificates renewed on disk picked up without a restart.

``CertificateFiles`` re-reads a certificate, its key (and a client CA) when
one of the files changes (looked at most once a second, at a handshake), so a
renewal by cert-manager or certbot takes effect for the next connection;
connections already open keep the certificate they were made with. Until the
new files load (a renewal written in two steps, say) the last good ones stay
in use.

- HTTP: ``server_context`` — TLS 1.2 or newer, forward-secret AEAD ciphers;
  a renewed chain is loaded into the same context before the next handshake
  (an SNI callback would miss clients that send no server name).
- gRPC: ``grpc_credentials`` — gRPC core asks for the newest certificates at
  every handshake; with a client CA, a client must present a certificate it
  signed, or the handshake fails.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from service.config.settings import Settings
from service.domain.errors import StartupError

_LOGGER = logging.getLogger("service.tls")
#: A certificate chain, its key and an optional client CA, as PEM bytes.
Material = tuple[bytes, bytes, bytes | None]
#: Forward secrecy and authenticated encryption only, for TLS 1.2 (TLS 1.3's suites are all of that kind).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class CertificateFiles:
    """A certificate chain, its key and optionally a CA for client certificates, reloaded when they change."""

    def __init__(
        self,
        cert: Path,
        key: Path,
        client_ca: Path | None = None,
        *,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        read: Callable[[Path], bytes] = Path.read_bytes,
    ) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._read_file = read
        self._check_interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()  # gRPC core calls from its own threads.
        self._checked = clock()
        self._stamp = self._stamps()
        self.generation = 0
        self.material, self.context = self._read()

    def _paths(self) -> list[Path]:
        return [self.cert, self.key] + ([self.client_ca] if self.client_ca else [])

    def _stamps(self) -> tuple[tuple[float, int], ...]:
        try:
            return tuple((path.stat().st_mtime, path.stat().st_size) for path in self._paths())
        except OSError:
            return ()

    def _read(self) -> tuple[Material, ssl.SSLContext]:
        """The files as bytes (for gRPC) and a server context made of those very bytes: it proves that OpenSSL
        takes them as a pair, even when a renewal replaced one file between the two reads."""
        try:
            material = (
                self._read_file(self.cert),
                self._read_file(self.key),
                self._read_file(self.client_ca) if self.client_ca else None,
            )
            return material, server_context(material)
        except (OSError, ssl.SSLError) as ex:
            raise StartupError(f"cannot use the TLS certificate {self.cert} with key {self.key}: {ex}") from None

    def refresh(self) -> bool:
        """Re-read the files if they changed (at most once per check interval); tell whether they were replaced."""
        with self._lock:
            now = self._clock()
            if now - self._checked < self._check_interval:
                return False
            self._checked = now
            stamp = self._stamps()
            if stamp == self._stamp:
                return False
            try:
                material = self._read()
            except StartupError as ex:
                _LOGGER.warning("renewed TLS files cannot be used yet; keeping the previous ones: %s", ex)
                return False
            self._stamp, (self.material, self.context) = stamp, material
            self.generation += 1
            _LOGGER.info("TLS certificate reloaded", extra={"certificate": str(self.cert)})
            return True


def server_context(material: Material) -> ssl.SSLContext:
    """A server context of a chain, its key and an optional client CA (PEM bytes): TLS 1.2 or newer,
    forward-secret AEAD ciphers, client certificates if there is a CA."""
    cert, key, client_ca = material
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    load_pair(context, cert, key)
    if client_ca is not None:
        context.load_verify_locations(cadata=client_ca.decode("ascii", errors="replace"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def load_pair(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """Load a chain and its key given as bytes (OpenSSL reads files only: in-memory ones, never on disk)."""
    descriptors = [os.memfd_create("routee-callbacks-tls", os.MFD_CLOEXEC) for _ in (cert, key)]
    try:
        for descriptor, data in zip(descriptors, (cert, key), strict=True):
            os.write(descriptor, data)
        context.load_cert_chain(*(f"/proc/self/fd/{descriptor}" for descriptor in descriptors))
    finally:
        for descriptor in descriptors:
            os.close(descriptor)


class ReloadingContext:
    """The HTTP server's SSLContext, given the renewed certificate before a handshake when the files changed.

    The renewed chain is loaded into the same context (OpenSSL applies it to connections made from then on),
    on the event loop that makes the connections, just before their handshakes.
    """

    def __init__(self, files: CertificateFiles) -> None:
        self._files = files
        self._generation = files.generation
        self.context = server_context(files.material)

    def refresh(self) -> None:
        """Use the newest certificate for the handshakes to come."""
        self._files.refresh()
        if self._generation != self._files.generation:
            cert, key, _ = self._files.material  # The pair proven to match, not the files as they are now.
            load_pair(self.context, cert, key)
            self._generation = self._files.generation


def grpc_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    """gRPC server credentials that follow the files; client certificates required when there is a client CA."""

    def configuration() -> grpc.ServerCertificateConfiguration:
        cert, key, client_ca = files.material
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        return configuration() if files.refresh() else None

    return grpc.dynamic_ssl_server_credentials(
        configuration(),
        fetch,  # type: ignore[arg-type]  # gRPC takes None for "unchanged"; grpc-stubs says otherwise
        require_client_authentication=files.client_ca is not None,
    )


def http_certificates(settings: Settings) -> CertificateFiles | None:
    """The HTTPS certificate files, if configured (StartupError when OpenSSL cannot use them)."""
    if settings.http_tls_cert is None or settings.http_tls_key is None:
        return None
    return CertificateFiles(settings.http_tls_cert, settings.http_tls_key)


def grpc_certificates(settings: Settings) -> CertificateFiles | None:
    """The gRPC certificate files and client CA, if configured (StartupError when OpenSSL cannot use them)."""
    if settings.grpc_tls_cert is None or settings.grpc_tls_key is None:
        return None
    return CertificateFiles(settings.grpc_tls_cert, settings.grpc_tls_key, settings.grpc_client_ca)
