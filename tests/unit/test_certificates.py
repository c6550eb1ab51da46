"""Certificate files reloaded when renewed on disk: at most once per interval, the last good pair kept until a
renewal is complete, and the HTTP context given the new chain in place."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest

from service.config.tls import CertificateFiles, ReloadingContext
from service.domain.errors import StartupError
from support.certificates import make_certificates


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    return make_certificates(tmp_path / "tls")


def renew(certificates: Path, scratch: Path) -> tuple[bytes, bytes]:
    """A renewed server pair (as certbot writes it), returned as bytes; the files on disk are replaced."""
    shutil.copytree(certificates, scratch)
    make_certificates(scratch, rotate=True)
    return (scratch / "server.crt").read_bytes(), (scratch / "server.key").read_bytes()


def test_reloads_a_renewed_pair_once_the_interval_has_passed(certificates: Path, tmp_path: Path) -> None:
    clock = Clock()
    files = CertificateFiles(certificates / "server.crt", certificates / "server.key", clock=clock)
    old = files.material
    cert, key = renew(certificates, tmp_path / "renewed")
    (certificates / "server.key").write_bytes(key)
    (certificates / "server.crt").write_bytes(cert)
    clock.now = 0.5
    assert not files.refresh()  # Looked at most once per second.
    clock.now = 1.5
    assert files.refresh()
    assert files.material[:2] == (cert, key) != old[:2]
    assert files.generation == 1
    clock.now = 3.0
    assert not files.refresh()  # Unchanged since.


def test_keeps_the_previous_pair_until_the_renewal_is_complete(certificates: Path, tmp_path: Path) -> None:
    clock = Clock()
    files = CertificateFiles(certificates / "server.crt", certificates / "server.key", clock=clock)
    old = files.material
    cert, key = renew(certificates, tmp_path / "renewed")
    (certificates / "server.key").write_bytes(key)  # The key first: it does not match the old certificate.
    clock.now = 2.0
    assert not files.refresh()
    assert files.material == old
    (certificates / "server.crt").write_bytes(cert)
    clock.now = 4.0
    assert files.refresh()
    assert files.material[:2] == (cert, key)


def test_unusable_files_stop_start_up_with_the_file_named(certificates: Path) -> None:
    with pytest.raises(StartupError, match=r"client\.key"):
        CertificateFiles(certificates / "server.crt", certificates / "client.key")  # Not its key.


def test_the_http_context_takes_the_renewed_chain_in_place(certificates: Path, tmp_path: Path) -> None:
    clock = Clock()
    reloading = ReloadingContext(
        CertificateFiles(certificates / "server.crt", certificates / "server.key", clock=clock)
    )
    context = reloading.context
    cert, key = renew(certificates, tmp_path / "renewed")
    (certificates / "server.key").write_bytes(key)
    (certificates / "server.crt").write_bytes(cert)
    clock.now = 2.0
    reloading.refresh()
    assert reloading.context is context  # The server's listening socket keeps its context object.
    assert served_certificate(context, certificates / "ca.crt") == ssl.PEM_cert_to_DER_cert(cert.decode())


def served_certificate(server: ssl.SSLContext, ca: Path) -> bytes:
    """The certificate (DER) a handshake with ``server`` presents, over memory buffers."""
    client = ssl.create_default_context(cafile=str(ca))
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(to_client, to_server, server_hostname="localhost")
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    done: set[ssl.SSLObject] = set()
    for _ in range(10):
        for side in (client_side, server_side):
            try:
                side.do_handshake()
                done.add(side)
            except ssl.SSLWantReadError:
                pass
        server_in.write(to_server.read())
        to_client.write(server_out.read())
    assert client_side in done
    der = client_side.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_a_renewal_between_reading_the_certificate_and_the_key_is_not_taken_half(
    certificates: Path, tmp_path: Path
) -> None:
    """The renewal replaces both files just after the certificate was read and before the key is: the mixed pair
    is refused and the previous one kept, and the next look takes the whole renewed pair."""
    clock = Clock()
    renewal: list[tuple[bytes, bytes]] = []

    def read(path: Path) -> bytes:
        if path.name == "server.key" and renewal:
            cert, key = renewal.pop()
            (certificates / "server.crt").write_bytes(cert)
            (certificates / "server.key").write_bytes(key)
        return path.read_bytes()

    files = CertificateFiles(certificates / "server.crt", certificates / "server.key", clock=clock, read=read)
    context = ReloadingContext(files)
    old = files.material
    cert, key = renew(certificates, tmp_path / "renewed")
    (certificates / "server.crt").write_bytes(old[0] + b"\n")  # A first change the next look notices...
    renewal.append((cert, key))  # ...and the rest of the renewal lands in the middle of that look.
    clock.now = 1.5
    assert not files.refresh()
    assert files.material == old
    context.refresh()
    clock.now = 3.0
    assert files.refresh()
    assert files.material[:2] == (cert, key)
    context.refresh()  # The HTTP context takes the pair that was proven, from memory.
