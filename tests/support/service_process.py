"""The real ``routee-callbacks serve`` process, as a user starts it, and its own processes."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import grpc

from routee.callbacks.v1 import message_status_service_pb2 as pb2
from routee.callbacks.v1 import message_status_service_pb2_grpc as pb2_grpc
from support.network import http_request

OPEN = ("--allowlist-host", "", "--allow-cidr", "127.0.0.0/8")


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
