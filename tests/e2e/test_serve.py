"""End to end: the real ``routee-callbacks serve``, real HTTP, real gRPC, a real SQLite file."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from pathlib import Path

import grpc
import pytest

from conftest import StartService
from routee.callbacks.v1 import callback_pb2 as pb
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from support.fixtures import fixture_bodies
from support.network import CALLBACKS_PATH, free_port, http_request, post_callback
from support.polling import eventually
from support.service_process import OPEN, executable
from support.streams import StreamCollector

pytestmark = pytest.mark.e2e

CAMPAIGN_A = "c0ffee00-0000-4000-8000-0000000000a1"
CAMPAIGN_B = "c0ffee00-0000-4000-8000-0000000000b2"


def message(suffix: int) -> str:
    return f"a1b2c3d4-0000-4000-8000-00000000000{suffix}"


class TestWholePath:
    """Callbacks in over HTTP, status out over gRPC."""

    def test_fixtures_shuffled_and_duplicated(self, start_service: StartService) -> None:
        """Every fixture, in any order, three times over: right statuses; each change streamed once per campaign."""
        service = start_service(*OPEN)
        stream_a = StreamCollector(service.grpc_target, pb2.StreamStatusUpdatesRequest(campaign_tracking_id=CAMPAIGN_A))
        stream_b = StreamCollector(service.grpc_target, pb2.StreamStatusUpdatesRequest(campaign_tracking_id=CAMPAIGN_B))
        stream_all = StreamCollector(service.grpc_target, pb2.StreamStatusUpdatesRequest())
        try:
            bodies = list(fixture_bodies().values()) * 3
            random.Random(2024).shuffle(bodies)
            answers = [post_callback(service.http_port, body) for body in bodies]
            assert [answer.status for answer in answers] == [200] * 27
            assert sum(answer.json()["status"] == "accepted" for answer in answers) == 9
            assert sum(answer.json()["status"] == "duplicate" for answer in answers) == 18

            expected = {
                1: (pb.MESSAGE_STATUS_SEEN, "Seen", 3),
                2: (pb.MESSAGE_STATUS_FAILED, "Failed", 2),
                3: (pb.MESSAGE_STATUS_EXPIRED, "Expired", 2),
                4: (pb.MESSAGE_STATUS_UNDELIVERED, "Undelivered", 1),
                5: (pb.MESSAGE_STATUS_UNSENT, "Unsent", 1),
            }
            for suffix, (status, name, history) in expected.items():
                response = service.get_status(message(suffix))
                assert (response.status, response.status_name, len(response.events)) == (status, name, history)
                assert response.callback.tracking_id == message(suffix)
                assert json.loads(response.callback.raw_json)["status"]["name"] == name

            a_updates = stream_a.wait_for(7)
            b_updates = stream_b.wait_for(2)
            all_updates = stream_all.wait_for(9)
            for updates in (a_updates, b_updates, all_updates):
                sequences = [update.sequence for update in updates]
                assert sequences == sorted(set(sequences))
            assert {u.campaign_tracking_id for u in a_updates} == {CAMPAIGN_A}
            assert {u.campaign_tracking_id for u in b_updates} == {CAMPAIGN_B}
            assert len({(u.tracking_id, u.status_name) for u in a_updates}) == 7
            assert [u.sequence for u in all_updates] == list(range(1, 10))
        finally:
            for stream in (stream_a, stream_b, stream_all):
                stream.close()
        assert len(stream_a.updates) == 7, "a duplicate reached the stream"

    def test_bad_input_gets_its_status_and_stores_nothing(self, start_service: StartService) -> None:
        """400, 413, 415, 422, 404 and 405 over real HTTP, problem+json each time, nothing stored."""
        service = start_service(*OPEN)
        valid = fixture_bodies()["01-m1-queued.json"]
        cases = [
            ("POST", CALLBACKS_PATH, b"{oops", {"Content-Type": "application/json"}, 400),
            ("POST", CALLBACKS_PATH, b"x" * 70_000, {"Content-Type": "application/json"}, 413),
            ("POST", CALLBACKS_PATH, valid, {"Content-Type": "text/plain"}, 415),
            ("POST", CALLBACKS_PATH, b'{"trackingId": "t"}', {"Content-Type": "application/json"}, 422),
            ("POST", "/v1/callbacks/sms", valid, {"Content-Type": "application/json"}, 422),  # a Viber body
            ("POST", "/v1/callbacks/whatsapp", valid, {"Content-Type": "application/json"}, 404),
            ("PUT", CALLBACKS_PATH, valid, {"Content-Type": "application/json"}, 405),
        ]
        for method, path, body, headers, status in cases:
            answer = http_request(service.http_port, method, path, body, headers=headers)
            assert answer.status == status, (path, answer.body)
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["status"] == status
        with grpc.insecure_channel(service.grpc_target) as channel:
            stub = service.stub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetMessageStatus(pb2.GetMessageStatusRequest(tracking_id="t"), timeout=5)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as beyond:
                next(iter(stub.StreamStatusUpdates(pb2.StreamStatusUpdatesRequest(after_sequence=1), timeout=5)))
            assert beyond.value.code() == grpc.StatusCode.INVALID_ARGUMENT, "something was stored"

    def test_probes_and_metrics(self, start_service: StartService) -> None:
        """/healthz, /readyz and /metrics answer on the real process."""
        service = start_service(*OPEN)
        post_callback(service.http_port, fixture_bodies()["01-m1-queued.json"])
        assert http_request(service.http_port, "GET", "/healthz").status == 200
        ready = http_request(service.http_port, "GET", "/readyz")
        assert ready.status == 200
        assert ready.json()["ready"] is True
        metrics = http_request(service.http_port, "GET", "/metrics").body.decode()
        assert 'routee_callbacks_callbacks_total{channel="viber",outcome="accepted",reason=""} 1.0' in metrics
        assert "routee_callbacks_last_sequence 1.0" in metrics


class TestLifecycle:
    """Start-up errors, shutdown and restart."""

    def test_sigterm_ends_streams_and_restart_resumes(self, start_service: StartService, tmp_path: Path) -> None:
        """SIGTERM ends open streams with UNAVAILABLE and exits 0; resuming on a new start misses nothing."""
        database = tmp_path / "kept.db"
        first = start_service(*OPEN, database=database)
        bodies = list(fixture_bodies().values())
        stream = StreamCollector(first.grpc_target, pb2.StreamStatusUpdatesRequest())
        for body in bodies[:5]:
            assert post_callback(first.http_port, body).status == 200
        last = stream.wait_for(5)[-1].sequence
        assert first.stop(signal.SIGTERM) == 0  # To the whole process group, as a supervisor sends it.
        log = first.log()
        assert "restarting it" not in log, "the writer process must wait for the master, not stop on SIGTERM"
        assert log.index('"worker stopped"') < log.index('"writer stopped"'), "workers stop first, then the writer"
        stream.close()
        assert stream.error is not None
        assert stream.error.code() == grpc.StatusCode.UNAVAILABLE
        assert f"after_sequence={last}" in (stream.error.details() or "")

        second = start_service(*OPEN, database=database)
        for body in bodies:
            assert post_callback(second.http_port, body).status == 200
        resumed = StreamCollector(second.grpc_target, pb2.StreamStatusUpdatesRequest(after_sequence=last))
        try:
            assert [u.sequence for u in resumed.wait_for(4)] == [6, 7, 8, 9]
        finally:
            resumed.close()
        assert second.get_status(message(1)).status_name == "Seen"

    def test_bad_option_is_one_line_exit_2(self) -> None:
        """A bad option value: exit 2, one line naming the option, no usage, no traceback."""
        result = subprocess.run(
            [executable(), "serve", "--http-bind", "nonsense"], capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 2
        assert result.stderr == "routee-callbacks: error: --http-bind: expected HOST:PORT, got 'nonsense'\n"

    def test_bad_variable_is_one_line_exit_2(self) -> None:
        """A bad variable is reported like a bad flag."""
        result = subprocess.run(
            [executable(), "serve"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={"ROUTEE_CALLBACKS_ALLOW_CIDR": "10.0.0.0/99", "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 2
        assert result.stderr.startswith("routee-callbacks: error: --allow-cidr: expected a CIDR")
        assert len(result.stderr.splitlines()) == 1

    @pytest.mark.parametrize("value", ["inf", "nan", "-Infinity", "1e12"])
    def test_infinite_and_absurd_numbers_are_one_line_exit_2(self, value: str) -> None:
        """inf, NaN and values past an option's bound stop start-up like any bad value."""
        result = subprocess.run(
            [executable(), "serve", f"--header-timeout={value}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 2
        assert result.stderr.startswith("routee-callbacks: error: --header-timeout: expected a")
        assert len(result.stderr.splitlines()) == 1

    def test_a_runtime_directory_others_may_enter_is_refused(self, tmp_path: Path) -> None:
        """The per-user directory of the instances and the gRPC port locks must be this user's, mode 0700: one
        that others may write (where another local user could hold the port's lock) stops start-up with one line."""
        shared = tmp_path / f"routee-callbacks-{os.getuid()}"
        shared.mkdir()
        shared.chmod(0o777)
        result = subprocess.run(
            [executable(), "serve", *OPEN, "--database", str(tmp_path / "x.db"),
             "--grpc-bind", f"127.0.0.1:{free_port()}", "--http-bind", f"127.0.0.1:{free_port()}"],
            capture_output=True, text=True, timeout=30, check=False,
            env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)},
        )  # fmt: skip
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            f"routee-callbacks: error: cannot use the runtime directory {shared}: it must be this user's directory"
            " with mode 0700 (it is owned by uid 0, mode 777)".replace("uid 0", f"uid {os.getuid()}")
        ]

    @pytest.mark.parametrize(("host", "warned"), [("0.0.0.0", 1), ("127.0.0.1", 0)])
    def test_plain_grpc_beyond_loopback_is_warned_about(self, tmp_path: Path, host: str, warned: int) -> None:
        """gRPC without TLS on every interface: one warning at start; on loopback, none."""
        log = tmp_path / "serve.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [executable(), "serve", *OPEN, "--database", str(tmp_path / "x.db"), "--log-format", "json",
                 "--grpc-bind", f"{host}:{free_port()}", "--http-bind", f"127.0.0.1:{free_port()}"],
                stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:

                def started() -> bool:
                    assert process.poll() is None, log.read_text()
                    return "worker started" in log.read_text()

                eventually(started, "the worker did not start", 20)
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
        assert log.read_text().count("gRPC serves phone numbers and message texts in plain text") == warned

    def test_port_in_use_is_one_line_exit_1(self, tmp_path: Path) -> None:
        """A port in use stops start-up with exit 1 and one line saying what and where."""
        import socket

        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            result = subprocess.run(
                [
                    executable(),
                    "serve",
                    *OPEN,
                    "--http-bind",
                    f"127.0.0.1:{free_port()}",
                    "--grpc-bind",
                    f"127.0.0.1:{port}",
                    "--database",
                    str(tmp_path / "x.db"),
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        assert result.returncode == 1
        assert (
            result.stderr.strip()
            .splitlines()[-1]
            .startswith(f"routee-callbacks: error: cannot listen for gRPC on 127.0.0.1:{port}")
        )
        assert "Traceback" not in result.stderr

    def test_unusable_database_is_one_line_exit_1(self, tmp_path: Path) -> None:
        """A database path that cannot be opened stops start-up with exit 1."""
        result = subprocess.run(
            [executable(), "serve", *OPEN, "--database", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 1
        assert (
            result.stderr.strip()
            .splitlines()[-1]
            .startswith(f"routee-callbacks: error: cannot open database {tmp_path}")
        )

    def test_help_documents_every_option(self) -> None:
        """--help names every option of the contract."""
        result = subprocess.run([executable(), "serve", "--help"], capture_output=True, text=True, check=True)
        for flag in (
            "--http-bind",
            "--grpc-bind",
            "--database",
            "--allowlist-host",
            "--dns-server",
            "--allow-cidr",
            "--trusted-proxy",
        ):
            assert flag in result.stdout

    def test_version_prints_the_package_version(self) -> None:
        """--version prints the version of the installed package, as its metadata says."""
        python = Path(executable()).with_name("python")
        expected = subprocess.run(
            [python, "-c", "import importlib.metadata as m; print(m.version('routee-callbacks'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        result = subprocess.run([executable(), "--version"], capture_output=True, text=True, check=True)
        assert result.stdout.strip() == f"routee-callbacks {expected}"
        assert expected.count(".") >= 2


class TestClientCommands:
    """``routee-callbacks status`` and ``watch`` against the real service."""

    def test_status_and_watch(self, start_service: StartService) -> None:
        """status prints the current status and history; watch tails updates from a sequence."""
        service = start_service(*OPEN)
        for body in fixture_bodies().values():
            post_callback(service.http_port, body)
        status = subprocess.run(
            [executable(), "status", message(3), "--grpc-target", service.grpc_target],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert "EXPIRED (Expired)" in status.stdout
        assert "DELIVERED   delivered" in status.stdout
        as_json = subprocess.run(
            [executable(), "status", message(1), "--json", "--grpc-target", service.grpc_target],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert json.loads(as_json.stdout)["statusName"] == "Seen"
        missing = subprocess.run(
            [executable(), "status", "nope", "--grpc-target", service.grpc_target],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert missing.returncode == 1
        assert "NOT_FOUND" in missing.stderr
        watch = subprocess.Popen(
            [
                executable(),
                "watch",
                "--campaign",
                CAMPAIGN_B,
                "--after-sequence",
                "0",
                "--grpc-target",
                service.grpc_target,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            lines = [watch.stdout.readline() for _ in range(2)] if watch.stdout else []
        finally:
            watch.terminate()
            watch.wait(10)
            if watch.stdout:
                watch.stdout.close()
        assert "UNDELIVERED (Undelivered)" in lines[0]
        assert "UNSENT (Unsent)" in lines[1]


def test_the_console_script_is_installed() -> None:
    """The console script under test exists (``make install``, or the wheel's venv of ``make test``)."""
    assert Path(executable()).exists(), f"install the project first: {executable()}"
