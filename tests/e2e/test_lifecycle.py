"""The process model under an operator's signals and failures: reloads, more or fewer workers, a worker that
cannot start, a worker restarted while PostgreSQL is down."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import StartService
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from support.fixtures import fixture
from support.network import CALLBACKS_PATH, http_request
from support.polling import eventually
from support.postgres import PostgresServer
from support.service_process import OPEN, ServiceProcess, children, writer_process

pytestmark = pytest.mark.e2e


def body(tracking_id: str) -> bytes:
    """A Queued callback of its own message."""
    callback = fixture("01-m1-queued.json")
    callback["trackingId"] = tracking_id
    return json.dumps(callback).encode()


def workers(service: ServiceProcess) -> list[int]:
    """The worker processes of a running service (every child but the writer)."""
    writer = writer_process(service)
    return [pid for pid in children(service.process.pid) if pid != writer]


def shared_files(pid: int) -> list[Path]:
    """The instance's shared files a process has mapped (its metrics files, in the runtime directory)."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return sorted({Path(line.split(maxsplit=5)[5]) for line in maps if "/metrics/" in line and ".db" in line})


def post(service: ServiceProcess, tracking_id: str, timeout: float = 5.0) -> int:
    """POST a callback of its own message; the status answered (0: no answer)."""
    try:
        return http_request(
            service.http_port,
            "POST",
            CALLBACKS_PATH,
            body(tracking_id),
            headers={"Content-Type": "application/json"},
            timeout=timeout,
        ).status
    except OSError:
        return 0


def ok(service: ServiceProcess, tracking_id: str) -> bool:
    """Whether a callback posted now is acknowledged."""
    return post(service, tracking_id, timeout=3.0) == 200


def assert_kept(service: ServiceProcess, tracking_ids: list[str]) -> None:
    """Every one of these messages is stored (read back over gRPC)."""
    with service.channel() as channel:
        stub = service.stub(channel)
        for start in range(0, len(tracking_ids), 1000):
            chunk = tracking_ids[start : start + 1000]
            answer = stub.BatchGetMessageStatuses(pb2.BatchGetMessageStatusesRequest(tracking_ids=chunk), timeout=20)
            assert list(answer.missing_tracking_ids) == [], f"{len(answer.missing_tracking_ids)} acknowledged lost"


class Poster:
    """Posts distinct callbacks from a few threads until stopped (at most ``limit``); records what was kept."""

    def __init__(self, service: ServiceProcess, prefix: str, *, threads: int = 4, limit: int = 20_000) -> None:
        self.acknowledged: list[str] = []
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._post, args=(service, f"{prefix}-{n}", limit // threads))
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _post(self, service: ServiceProcess, prefix: str, limit: int) -> None:
        for number in range(limit):
            if self._stop.is_set():
                return
            tracking_id = f"{prefix}-{number}"
            status = post(service, tracking_id)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                self.acknowledged.append(tracking_id)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


class SlowPost:
    """A callback whose body arrives in two halves, the second when told: a request in flight meanwhile."""

    def __init__(self, service: ServiceProcess, tracking_id: str) -> None:
        self.tracking_id = tracking_id
        payload = body(tracking_id)
        self._rest = payload[len(payload) // 2 :]
        self._socket = socket.create_connection(("127.0.0.1", service.http_port), timeout=15)
        head = (
            f"POST {CALLBACKS_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        ).encode()
        self._socket.sendall(head + payload[: len(payload) // 2])

    def finish(self) -> int:
        """Send the rest; the status answered."""
        with self._socket:
            self._socket.sendall(self._rest)
            answer = b""
            while chunk := self._socket.recv(65536):
                answer += chunk
        return int(answer.split(b" ", 2)[1])


class TestSignals:
    """gunicorn's signals work at one worker and at several."""

    @pytest.mark.parametrize("count", [1, 2])
    def test_reload_under_load_loses_nothing(self, start_service: StartService, count: int) -> None:
        """SIGHUP while callbacks arrive: new workers replace the old ones, every callback answered 200 is kept,
        and the service answers 200 again within 10 s."""
        service = start_service(*OPEN, "--workers", str(count))
        before = set(workers(service))
        poster = Poster(service, f"hup{count}")
        try:
            eventually(lambda: len(poster.acknowledged) >= 50, "callbacks acknowledged before the reload")
            in_flight = SlowPost(service, f"hup{count}-in-flight")  # Keeps an old worker busy past the new start.
            os.kill(service.process.pid, signal.SIGHUP)
            eventually(lambda: len(set(workers(service)) - before) == count, "new workers")
            time.sleep(1.0)  # They bind the gRPC port beside the old ones, or fail to.
            assert in_flight.finish() == 200, service.log()[-3000:]
            poster.acknowledged.append(in_flight.tracking_id)
            eventually(lambda: not before & set(workers(service)), "every old worker replaced")
            seen = len(poster.acknowledged)
            eventually(lambda: len(poster.acknowledged) >= seen + 50, "callbacks acknowledged after the reload", 10)
        finally:
            poster.stop()
        assert len(workers(service)) == count
        # A connection the old worker accepted but had not read yet may be closed unanswered (0), and a new
        # worker answers 503 until it reaches the writer: Routee retries both. Never another status.
        assert set(poster.statuses) <= {0, 200, 503}, poster.statuses
        assert_kept(service, poster.acknowledged)
        assert service.get_status(poster.acknowledged[-1]).status_name == "Queued"
        # The old workers left without touching what the instance's processes share: the runtime directory with
        # the writer's socket and every process's metrics files.
        mapped = [path for pid in workers(service) for path in shared_files(pid)]
        assert mapped, "no metrics file mapped"
        assert all(path.exists() for path in mapped), mapped
        assert (mapped[0].parent.parent / "writer.sock").exists()
        metrics = http_request(service.http_port, "GET", "/metrics")
        assert metrics.status == 200
        assert b"routee_callbacks_callbacks_total" in metrics.body

    def test_more_and_fewer_workers(self, start_service: StartService) -> None:
        """SIGTTIN adds a worker beside the one running (it shares the gRPC port), SIGTTOU takes one away; both
        serve in between, and nothing but 200 is answered."""
        service = start_service(*OPEN)
        assert len(workers(service)) == 1
        os.kill(service.process.pid, signal.SIGTTIN)
        eventually(lambda: len(workers(service)) == 2, "a second worker")
        time.sleep(1.0)  # Let the new worker start, or fail to start, before counting again.
        assert len(workers(service)) == 2, service.log()
        assert all(ok(service, f"ttin-{n}") for n in range(40))
        os.kill(service.process.pid, signal.SIGTTOU)
        eventually(lambda: len(workers(service)) == 1, "back to one worker")
        assert all(ok(service, f"ttou-{n}") for n in range(20))
        assert service.get_status("ttou-19").status_name == "Queued"
        assert service.process.poll() is None


class TestWorkerFailures:
    """A worker that cannot start, and one restarted while the store is down."""

    def test_a_worker_that_cannot_start_stops_the_instance_with_its_cause(self, start_service: StartService) -> None:
        """The worker is killed and its gRPC port taken before the master restarts it: the instance stops with
        exit status 1 and one line naming the cause, instead of restarting workers forever."""
        service = start_service(*OPEN)
        (worker,) = workers(service)
        squatter = socket.socket()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            os.kill(worker, signal.SIGKILL)

            def bound() -> bool:
                try:
                    squatter.bind(("127.0.0.1", service.grpc_port))
                except OSError:
                    return False
                return True

            eventually(bound, "the killed worker's port came free", 5, interval=0.001)
            squatter.listen()
            status = service.process.wait(30)
        finally:
            squatter.close()
        log = service.log()
        assert status == 1, log
        cause = f"a worker failed to start: cannot listen for gRPC on 127.0.0.1:{service.grpc_port}"
        assert log.strip().splitlines()[-1].startswith(f"routee-callbacks: error: {cause}"), log[-2000:]
        assert log.count("Booting worker") == 2, "the master restarted the worker more than once"

    def test_a_worker_restarted_while_postgres_is_down_serves_once_it_is_back(
        self, start_service: StartService, own_postgres: PostgresServer
    ) -> None:
        """PostgreSQL down, the worker SIGKILLed: the new worker starts anyway (503 meanwhile), the instance's
        shared files are intact, and within 10 s of PostgreSQL's return callbacks get 200 and reads succeed."""
        service = start_service(*OPEN, database=own_postgres.create_database())
        assert ok(service, "pgw-0")
        own_postgres.stop()
        try:
            (worker,) = workers(service)
            os.kill(worker, signal.SIGKILL)
            eventually(lambda: len(workers(service)) == 1 and worker not in workers(service), "a new worker")
            eventually(lambda: post(service, "pgw-x") == 503, "503 while down")
        finally:
            own_postgres.start()
        took = eventually(lambda: ok(service, "pgw-1"), "200 after PostgreSQL came back", 10)
        assert service.get_status("pgw-1").status_name == "Queued", f"took {took:.1f} s"
        assert service.get_status("pgw-0").status_name == "Queued"
        assert service.log().count("Booting worker") == 2
