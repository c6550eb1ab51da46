"""The container image as a platform runs it (``make image-test``): as its own non-root user, a callback in over
HTTP and out over gRPC, the health service, a clean stop on SIGTERM, and its configuration."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from routee.callbacks.v1 import message_status_service_pb2 as pb2
from routee.callbacks.v1 import message_status_service_pb2_grpc as pb2_grpc
from support.fixtures import fixture_bodies
from support.network import CALLBACKS_PATH, free_port, http_request

IMAGE = os.environ.get("ROUTEE_TEST_IMAGE", "")
UID = 10001
DATA = "/var/lib/routee-callbacks"

pytestmark = pytest.mark.skipif(not IMAGE, reason="run by `make image-test`, which builds the image first")


def buildah(*args: str) -> str:
    """Run buildah; its output."""
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=True, timeout=120).stdout.strip()


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The image's OCI configuration."""
    document: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", IMAGE))["OCIv1"]["config"]
    return document


@pytest.fixture
def container() -> Iterator[str]:
    """A working container of the image; removed afterwards."""
    name = buildah("from", "--pull-never", IMAGE)
    try:
        yield name
    finally:
        buildah("rm", name)


@pytest.fixture
def rootfs(container: str) -> Iterator[Path]:
    """The image's files, mounted read-only in effect (the test only reads them)."""
    path = Path(buildah("mount", container))
    try:
        yield path
    finally:
        buildah("umount", container)


def entrypoint(marker: str, deadline: float = 20.0) -> int:
    """The pid of the image's entrypoint process (gunicorn's master), found by a marker of its command line."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = {}
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if proc.name.isdigit():
                    command = (proc / "cmdline").read_bytes().split(b"\0")
                    if command[0].endswith(b"/python") and marker.encode() in b" ".join(command):
                        found[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        masters = [pid for pid, parent in found.items() if parent not in found]
        if masters:
            return masters[0]
        time.sleep(0.1)
    raise AssertionError(f"no entrypoint process with {marker!r}")


def owner(pid: int) -> int:
    """The real user id a process runs as."""
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
    return int(line.split()[1])


class TestConfiguration:
    """What the image declares, as a runtime reads it."""

    def test_user_entrypoint_ports_volume_and_labels(self, config: dict[str, Any]) -> None:
        """A fixed non-root user, the console script as entrypoint with ``serve`` as command, both ports
        exposed and bound on every interface through the service's own variables, the data volume, OCI labels."""
        assert config["User"] == f"{UID}:{UID}"
        assert config["Entrypoint"] == ["routee-callbacks"]
        assert config["Cmd"] == ["serve"]
        assert set(config["ExposedPorts"]) == {"8080/tcp", "50051/tcp"}
        assert set(config["Volumes"]) == {DATA}
        env = dict(item.split("=", 1) for item in config["Env"])
        assert env["ROUTEE_CALLBACKS_HTTP_BIND"] == "0.0.0.0:8080"
        assert env["ROUTEE_CALLBACKS_GRPC_BIND"] == "0.0.0.0:50051"
        assert env["ROUTEE_CALLBACKS_DATABASE"].startswith(f"{DATA}/")
        labels = config["Labels"]
        assert labels["org.opencontainers.image.version"] == IMAGE.rsplit(":", 1)[1]
        assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
        assert labels["org.opencontainers.image.source"]

    def test_no_build_tools_caches_or_history(self, rootfs: Path) -> None:
        """The runtime stage holds Python and the venv: no compiler, no pip, no caches, no shell history, no
        wheel or tests left behind; the data directory belongs to the service's user."""
        site = rootfs / "opt/routee-callbacks/lib/python3.11/site-packages"
        assert (site / "service" / "cli" / "main.py").is_file()
        absent = [
            "usr/bin/gcc", "usr/bin/cc", "usr/bin/strip", "usr/bin/make", "usr/bin/pip3",
            "usr/lib/python3/dist-packages/pip", "opt/routee-callbacks/bin/pip", "root/.cache",
            "root/.bash_history", "tmp/dist", "opt/routee-callbacks/bin/activate",
        ]  # fmt: skip
        assert [path for path in absent if (rootfs / path).exists()] == []
        assert not list(site.glob("pip*"))
        assert not (site / "tests").exists()
        assert list((rootfs / "var/lib/apt/lists").glob("*_Packages*")) == []
        assert (rootfs / DATA.lstrip("/")).stat().st_uid == UID


class TestRunning:
    """The image run as a pod's runtime runs it."""

    def test_serves_keeps_answers_health_and_stops_cleanly(self, container: str, tmp_path: Path) -> None:
        """``serve`` runs as uid 10001, keeps a callback posted over HTTP and serves it over gRPC, answers the
        health check, exits 0 on SIGTERM to its entrypoint, and writes only to /tmp and its data volume (so a
        read-only root filesystem serves)."""
        http_port, grpc_port = free_port(), free_port()
        started = time.time() - 1
        log = (tmp_path / "image.log").open("wb")
        # buildah run answers its own SIGTERM with SIGKILL to the child: the test signals the entrypoint itself.
        run = subprocess.Popen(
            [
                "buildah", "run", "--isolation", "chroot", container, "--",
                "routee-callbacks", "serve", "--http-bind", f"127.0.0.1:{http_port}",
                "--grpc-bind", f"127.0.0.1:{grpc_port}", "--allowlist-host", "", "--allow-cidr", "127.0.0.0/8",
            ],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            master = entrypoint(f"127.0.0.1:{grpc_port}")
            assert owner(master) == UID
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(OSError):
                    if http_request(http_port, "GET", "/readyz").status == 200:
                        break
                assert time.monotonic() < deadline, (tmp_path / "image.log").read_text()
                time.sleep(0.2)
            body = fixture_bodies()["01-m1-queued.json"]
            posted = http_request(http_port, "POST", CALLBACKS_PATH, body, headers={"Content-Type": "application/json"})
            assert posted.status == 200, posted.body
            tracking_id = json.loads(body)["trackingId"]
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert health.status == health_pb2.HealthCheckResponse.SERVING
                answer = pb2_grpc.MessageStatusServiceStub(channel).GetMessageStatus(
                    pb2.GetMessageStatusRequest(tracking_id=tracking_id), timeout=10
                )
            assert answer.status_name == "Queued"
            os.kill(master, signal.SIGTERM)
            assert run.wait(30) == 0, (tmp_path / "image.log").read_text()
        finally:
            if run.poll() is None:
                run.kill()
                run.wait(30)
            log.close()
        assert b"Shutting down: Master" in (tmp_path / "image.log").read_bytes()
        # What a read-only root filesystem needs: the service wrote nothing but its runtime files (/tmp) and its
        # data (the volume).
        root = Path(buildah("mount", container))
        try:
            written = [
                str(path.relative_to(root))
                for path in root.rglob("*")
                if not path.is_symlink()
                and path.is_file()
                and path.stat().st_mtime >= started
                and not path.is_relative_to(root / "tmp")
                and not path.is_relative_to(root / DATA.lstrip("/"))
            ]
        finally:
            buildah("umount", container)
        assert written == []
