"""Many processes, one log: several workers on one machine, several instances on PostgreSQL, a real haproxy in
front. A callback posted anywhere reaches every stream everywhere, in order, once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from conftest import StartService
from routee.callbacks.v1 import callback_pb2 as pb
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from routee.callbacks.v1 import message_status_service_pb2_grpc as pb2_grpc
from support.balancer import connection_owners, haproxy
from support.fixtures import fixture
from support.network import SMS_PATH, free_port, http_request, post_callback
from support.polling import eventually
from support.postgres import PostgresServer
from support.service_process import OPEN, ServiceProcess, children, executable, writer_process
from support.streams import StreamCollector, stored_head

pytestmark = pytest.mark.e2e


def body(tracking_id: str, campaign: str = "c1", status: str = "Queued", second: int = 0) -> bytes:
    """A callback of one message, one status at one instant."""
    callback = fixture("01-m1-queued.json")
    callback.update(trackingId=tracking_id, campaignTrackingId=campaign)
    callback["status"] = {**callback["status"], "name": status, "updatedDate": f"2024-05-01T10:00:{second:02d}Z"}
    return json.dumps(callback).encode()


def post_all(
    targets: list[ServiceProcess | int], bodies: list[bytes], *, threads: int = 4, source: str = "127.0.0.1"
) -> list[int]:
    """POST every body, spread over the targets (instances, or plain ports) from several threads; the statuses."""
    statuses = [0] * len(bodies)

    def send(offset: int) -> None:
        for index in range(offset, len(bodies), threads):
            target = targets[index % len(targets)]
            port = target if isinstance(target, int) else target.http_port
            statuses[index] = post_callback(port, bodies[index], source=source).status

    workers = [threading.Thread(target=send, args=(offset,)) for offset in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return statuses


def replay(target: str, count: int, after: int = 0) -> list[pb2.StatusUpdate]:
    """Everything stored after a sequence, read back in one stream (``count`` updates expected)."""
    collector = StreamCollector(target, pb2.StreamStatusUpdatesRequest(after_sequence=after))
    try:
        return collector.wait_for(count, timeout=20)[:count]
    finally:
        collector.close()


def assert_complete(updates: list[pb2.StatusUpdate], expected: list[pb2.StatusUpdate], what: str) -> None:
    """A stream got exactly the expected updates, in order, none twice."""
    assert [u.sequence for u in updates] == [u.sequence for u in expected], what
    assert [(u.tracking_id, u.status_name) for u in updates] == [(u.tracking_id, u.status_name) for u in expected]


class TestWorkers:
    """--workers N on one machine (SQLite)."""

    def test_a_stream_on_any_worker_sees_every_callback(self, start_service: StartService) -> None:
        """With two workers, streams held by either worker get every callback, whichever worker took it."""
        service = start_service(*OPEN, "--workers", "2")
        workers = [pid for pid in children(service.process.pid) if pid != writer_process(service)]
        assert len(workers) == 2
        streams: list[StreamCollector] = []
        try:
            for _ in range(40):  # The kernel spreads connections over the workers; open until both hold streams.
                streams.append(
                    StreamCollector(service.grpc_target, pb2.StreamStatusUpdatesRequest(), own_connection=True)
                )
                owners = connection_owners(service.grpc_port, workers)
                if len(streams) >= 6 and sum(count > 0 for count in owners.values()) >= 2:
                    break
            assert sum(count > 0 for count in owners.values()) >= 2, f"streams did not spread: {owners}"
            bodies = [body(f"w-{index}") for index in range(120)]
            assert post_all([service], bodies, threads=6) == [200] * 120
            for stream in streams:
                assert [u.sequence for u in stream.wait_for(120)] == list(range(1, 121))
        finally:
            for stream in streams:
                stream.close()

    def test_a_second_instance_cannot_take_the_grpc_port(self, start_service: StartService, tmp_path: Path) -> None:
        """Workers share the gRPC port; another instance on it fails to start, with one line saying why."""
        first = start_service(*OPEN, "--workers", "2")
        second = subprocess.run(
            [
                executable(), "serve", *OPEN,
                "--http-bind", f"127.0.0.1:{free_port()}", "--grpc-bind", first.grpc_target,
                "--database", str(tmp_path / "other.db"), "--workers", "2",
            ],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert second.returncode == 1
        assert "another routee-callbacks instance serves it" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1


@pytest.fixture
def two_instances(start_service: StartService, pg_database: str) -> tuple[ServiceProcess, ServiceProcess]:
    """Two instances on one PostgreSQL database."""
    return start_service(*OPEN, database=pg_database), start_service(*OPEN, database=pg_database)


class TestInstances:
    """Several instances on PostgreSQL."""

    def test_callbacks_on_any_instance_reach_streams_on_every_instance(
        self, two_instances: tuple[ServiceProcess, ServiceProcess]
    ) -> None:
        """Posted to both at once, from several threads: every stream on either instance gets its filter's
        updates once each, in order, and all agree on every update's sequence."""
        first, second = two_instances
        streams = {
            (instance.grpc_target, campaign): StreamCollector(
                instance.grpc_target, pb2.StreamStatusUpdatesRequest(campaign_tracking_id=campaign)
            )
            for instance in two_instances
            for campaign in ("", "c1", "c2")
        }
        try:
            bodies = [body(f"i-{index}", campaign=f"c{index % 2 + 1}") for index in range(200)]
            assert post_all([first, second], bodies, threads=8) == [200] * 200
            everything = replay(first.grpc_target, 200)
            assert [u.sequence for u in everything] == list(range(1, 201))
            for (target, campaign), stream in streams.items():
                expected = [u for u in everything if not campaign or u.campaign_tracking_id == campaign]
                assert_complete(stream.wait_for(len(expected)), expected, f"stream of {campaign or 'all'} on {target}")
        finally:
            for stream in streams.values():
                stream.close()

    def test_the_parts_of_many_sms_at_two_instances_at_once_give_each_message_one_status(
        self, two_instances: tuple[ServiceProcess, ServiceProcess]
    ) -> None:
        """Forty 3-part SMS, every part's Sent and Delivered posted twice, shuffled, to both instances from eight
        threads: each part event is stored once, every message is DELIVERED with its three parts on either
        instance, and the campaign counts 40 delivered messages."""
        rng = random.Random(7)
        reports = [
            json.dumps(
                {
                    "messageId": f"sms-{message}",
                    "part": part,
                    "parts": 3,
                    "campaignTrackingId": "c-sms",
                    "status": {"name": name, "updatedDate": f"2024-05-01T10:00:{second:02d}Z"},
                }
            ).encode()
            for message in range(40)
            for part in (1, 2, 3)
            for name, second in (("Sent", part), ("Delivered", 10 + part))
        ]
        posts = reports * 2
        rng.shuffle(posts)
        statuses: list[int] = []

        def send(offset: int) -> None:
            for index in range(offset, len(posts), 8):
                port = two_instances[index % 2].http_port
                statuses.append(post_callback(port, posts[index], path=SMS_PATH).status)

        threads = [threading.Thread(target=send, args=(offset,)) for offset in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200] * len(posts)
        assert stored_head(two_instances[0].grpc_target) == len(reports), "each part's event stored once"
        updates = replay(two_instances[1].grpc_target, len(reports))
        assert len({(u.tracking_id, u.part, u.status_name) for u in updates}) == len(reports)
        for instance in two_instances:
            for message in (0, 17, 39):
                response = instance.get_status(f"sms-{message}")
                assert response.status == pb.MESSAGE_STATUS_DELIVERED
                assert [part.part for part in response.parts] == [1, 2, 3]
        with two_instances[1].channel() as channel:
            summary = pb2_grpc.MessageStatusServiceStub(channel).GetCampaignSummary(
                pb2.GetCampaignSummaryRequest(campaign_tracking_id="c-sms"), timeout=10
            )
        assert [(count.status, count.messages) for count in summary.counts] == [(pb.MESSAGE_STATUS_DELIVERED, 40)]

    def test_resume_on_another_instance_while_callbacks_keep_arriving(
        self, two_instances: tuple[ServiceProcess, ServiceProcess]
    ) -> None:
        """A client reads from one instance, breaks off, resumes on the other from its last sequence: together
        the two streams hold every update once, while callbacks kept arriving at both instances."""
        first, second = two_instances
        stop = threading.Event()
        sent: list[int] = []

        def keep_posting() -> None:
            number = 0
            while not stop.is_set() and number < 2000:
                target = (first, second)[number % 2]
                sent.append(post_callback(target.http_port, body(f"r-{number}")).status)
                number += 1

        poster = threading.Thread(target=keep_posting)
        poster.start()
        try:
            before = StreamCollector(first.grpc_target, pb2.StreamStatusUpdatesRequest(after_sequence=0))
            before.wait_for(60)
            before.close()
            last = before.updates[-1].sequence
            after = StreamCollector(second.grpc_target, pb2.StreamStatusUpdatesRequest(after_sequence=last))
            after.wait_for(80)
        finally:
            stop.set()
            poster.join()
        assert set(sent) == {200}
        total = len(sent)
        after.wait_for(total - len(before.updates))
        after.close()
        combined = before.updates + after.updates
        assert [u.sequence for u in combined] == list(range(1, total + 1)), "a gap or a repeat across the resume"

    def test_the_same_callback_at_two_instances_at_once_is_kept_once(
        self, two_instances: tuple[ServiceProcess, ServiceProcess]
    ) -> None:
        """Each of 40 callbacks sent to both instances at the same moment: one accepted, one duplicate."""
        second = two_instances[1]

        def send(instance: ServiceProcess, payload: bytes, barrier: threading.Barrier, answers: dict[int, str]) -> None:
            barrier.wait()
            answers[instance.http_port] = post_callback(instance.http_port, payload).json()["status"]

        for number in range(40):
            payload, barrier, answers = body(f"d-{number}"), threading.Barrier(2), {}
            threads = [
                threading.Thread(target=send, args=(instance, payload, barrier, answers)) for instance in two_instances
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(answers.values()) == ["accepted", "duplicate"], answers
        assert len(replay(second.grpc_target, 40)) == 40


class TestLoadBalancer:
    """The repository's haproxy configuration in front of two instances."""

    def test_callbacks_and_grpc_through_haproxy(
        self, start_service: StartService, pg_database: str, tmp_path: Path
    ) -> None:
        """Routee's address reaches the allowlist through X-Forwarded-For; callbacks and gRPC calls are spread
        over both instances; a stream through the balancer sees everything."""
        proxied = ("--allowlist-host", "", "--allow-cidr", "127.0.0.2/32", "--trusted-proxy", "127.0.0.1/32")
        instances = [start_service(*proxied, database=pg_database) for _ in range(2)]
        with haproxy(instances, tmp_path / "haproxy.log") as (http_port, grpc_port):
            target = f"127.0.0.1:{grpc_port}"
            stream = StreamCollector(target, pb2.StreamStatusUpdatesRequest(campaign_tracking_id="via-lb"))
            bodies = [body(f"lb-{number}", campaign="via-lb") for number in range(40)]
            assert post_all([http_port], bodies, threads=4, source="127.0.0.2") == [200] * 40
            stranger = post_callback(http_port, body("lb-stranger"), source="127.0.0.3")
            assert stranger.status == 403, "the balancer's own address must not be what the allowlist judges"
            assert [u.sequence for u in stream.wait_for(40)] == list(range(1, 41))
            stream.close()
            for instance in instances:  # Round robin: both instances took callbacks.
                metrics = http_request(instance.http_port, "GET", "/metrics").body.decode()
                accepted = next(
                    float(line.rsplit(" ", 1)[1])
                    for line in metrics.splitlines()
                    if line.startswith('routee_callbacks_callbacks_total{channel="viber",outcome="accepted"')
                )
                assert accepted >= 10
            with grpc.insecure_channel(target) as channel:
                stub = pb2_grpc.MessageStatusServiceStub(channel)
                for number in range(10):  # Unary calls through the balancer, to either instance.
                    response = stub.GetMessageStatus(pb2.GetMessageStatusRequest(tracking_id=f"lb-{number}"), timeout=5)
                    assert response.status_name == "Queued"


class TestFaults:
    """PostgreSQL going away, an instance killed, the writer process killed."""

    def test_postgres_down_gives_503_fast_and_everything_recovers(
        self, start_service: StartService, own_postgres: PostgresServer
    ) -> None:
        """PostgreSQL stopped: callbacks get 503 within about a second, /readyz names the database, gRPC reads
        are UNAVAILABLE; once it is back, everything works without a restart and a resumed stream has no gap."""
        server = own_postgres
        database = server.create_database()
        service = start_service(*OPEN, database=database)
        assert post_callback(service.http_port, body("pg-1")).status == 200
        stream = StreamCollector(service.grpc_target, pb2.StreamStatusUpdatesRequest(after_sequence=0))
        stream.wait_for(1)
        server.stop()
        try:
            started = time.monotonic()
            answer = post_callback(service.http_port, body("pg-2"))
            took = time.monotonic() - started
            assert answer.status == 503
            assert answer.json()["reason"] == "store_unavailable"
            assert took < 2.0, f"503 took {took:.2f} s"
            ready = http_request(service.http_port, "GET", "/readyz")
            assert ready.status == 503
            assert f"PostgreSQL 127.0.0.1:{server.port}/" in ready.json()["checks"]["store"]["error"]
            with pytest.raises(grpc.RpcError) as unavailable:
                service.get_status("pg-1")
            assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            server.start()
        eventually(
            lambda: post_callback(service.http_port, body("pg-3")).status == 200,
            "did not recover after PostgreSQL came back",
            20,
            interval=0.2,
        )
        assert http_request(service.http_port, "GET", "/readyz").status == 200
        assert service.get_status("pg-3").status_name == "Queued"
        stored = replay(service.grpc_target, 2)
        if stream.error is None:  # The stream survived the outage: it continues with no gap.
            assert_complete(stream.wait_for(2), stored, "the stream that stayed open")
        else:  # It ended with UNAVAILABLE: resuming from its last sequence misses nothing.
            assert stream.error.code() == grpc.StatusCode.UNAVAILABLE
            resumed = replay(service.grpc_target, 2 - len(stream.updates), after=stream.updates[-1].sequence)
            assert_complete(stream.updates + resumed, stored, "the stream resumed after the outage")
        stream.close()

    def test_reads_succeed_on_every_instance_once_ready_after_a_postgres_restart(
        self, start_service: StartService, own_postgres: PostgresServer
    ) -> None:
        """Two instances, PostgreSQL stopped for 4 s and started again: once /readyz says ready, every read on
        both instances at once succeeds (the pooled connections the restart killed are not handed out)."""
        database = own_postgres.create_database()
        instances = [start_service(*OPEN, database=database) for _ in range(2)]
        assert post_callback(instances[0].http_port, body("restart-1")).status == 200

        def read_all_at_once() -> list[grpc.StatusCode | None]:
            """Eight reads on each instance at once (enough to use, and after the restart find, every pooled
            connection); the error code of each, None for success."""
            codes: list[grpc.StatusCode | None] = []

            def read(instance: ServiceProcess) -> None:
                try:
                    assert instance.get_status("restart-1").status_name == "Queued"
                    codes.append(None)
                except grpc.RpcError as ex:
                    codes.append(ex.code())

            threads = [threading.Thread(target=read, args=(instance,)) for instance in instances for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            return codes

        assert read_all_at_once() == [None] * 16
        own_postgres.stop()
        time.sleep(4.0)
        own_postgres.start()
        for instance in instances:
            eventually(
                lambda instance=instance: http_request(instance.http_port, "GET", "/readyz").status == 200,
                "not ready again after PostgreSQL came back",
                20,
            )
        assert read_all_at_once() == [None] * 16

    def test_kill_9_of_one_instance_loses_nothing_and_disturbs_no_other_stream(
        self, two_instances: tuple[ServiceProcess, ServiceProcess]
    ) -> None:
        """Posting to both, one instance is SIGKILLed: every callback answered 200 is kept, and a stream on the
        other instance goes on receiving every update in order."""
        doomed, survivor = two_instances
        watcher = StreamCollector(survivor.grpc_target, pb2.StreamStatusUpdatesRequest())
        acknowledged: list[str] = []
        stop = threading.Event()

        def keep_posting(offset: int) -> None:
            number = offset
            while not stop.is_set() and number < 4000:
                target = (doomed, survivor)[number % 2]
                try:
                    if post_callback(target.http_port, body(f"k-{number}")).status == 200:
                        acknowledged.append(f"k-{number}")
                except OSError:
                    pass  # The killed instance refuses; Routee would retry elsewhere.
                number += 4

        posters = [threading.Thread(target=keep_posting, args=(offset,)) for offset in range(4)]
        for poster in posters:
            poster.start()
        time.sleep(random.uniform(1.0, 2.0))
        doomed.stop(signal.SIGKILL)
        time.sleep(1.0)
        stop.set()
        for poster in posters:
            poster.join()
        everything = replay(survivor.grpc_target, stored_head(survivor.grpc_target))
        stored = {u.tracking_id for u in everything}
        assert set(acknowledged) <= stored, f"{len(set(acknowledged) - stored)} acknowledged callbacks lost"
        assert_complete(watcher.wait_for(len(everything)), everything, "the stream on the surviving instance")
        assert watcher.error is None
        watcher.close()

    def test_the_writer_process_is_restarted_and_streams_go_on(self, start_service: StartService) -> None:
        """SIGKILL of the writer process: callbacks get 503 (never 200) until the master has restarted it, then
        200 again; a stream open throughout receives every update with no gap."""
        service = start_service(*OPEN)
        stream = StreamCollector(service.grpc_target, pb2.StreamStatusUpdatesRequest(after_sequence=0))
        assert post_callback(service.http_port, body("wp-0")).status == 200
        statuses = []
        os.kill(writer_process(service), signal.SIGKILL)
        deadline = time.monotonic() + 15
        number = 1
        while time.monotonic() < deadline:
            answer = post_callback(service.http_port, body(f"wp-{number}"))
            statuses.append(answer.status)
            number += 1
            if answer.status == 200 and statuses.count(200) >= 3:
                break
            time.sleep(0.05)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[-1] == 200, "the writer process was not restarted"
        stored = replay(service.grpc_target, 1 + statuses.count(200))
        assert_complete(stream.wait_for(len(stored)), stored, "the stream across the writer's restart")
        stream.close()
