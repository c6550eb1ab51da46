"""End to end: ``routee-callbacks forget`` erases one person from a running service's database (either engine);
the service goes on, and what it serves and streams afterwards is the erased form."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import StartService
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from service.routee.privacy import e164
from support.fixtures import fixture_bodies, inbound_bodies
from support.network import INBOUND_PATH, http_request, post_callback
from support.service_process import OPEN, executable
from support.streams import StreamCollector

pytestmark = pytest.mark.e2e
MESSAGE = "a1b2c3d4-0000-4000-8000-000000000001"  # Sent to +306900000001, who replied.


def forget(database: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [executable(), "forget", *args, "--database", database], capture_output=True, text=True, timeout=120
    )


def test_forget_erases_a_recipient_while_the_service_runs(start_service: StartService, database: str) -> None:
    service = start_service(*OPEN, database=database)
    assert post_callback(service.http_port, fixture_bodies()["02-m1-delivered.json"]).status == 200
    reply = inbound_bodies()["01-m1-reply-text.json"]
    headers = {"Content-Type": "application/json"}
    assert http_request(service.http_port, "POST", INBOUND_PATH, reply, headers=headers).status == 200

    assert forget(database, "--recipient", "not a number").returncode == 2
    result = forget(database, "--recipient", "0030 690 000 0001", "--json")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert (counts["callbacks"], counts["replies"], counts["quarantined_bodies"]) == (1, 1, 0)
    assert "306900000001" not in result.stdout + result.stderr, "it prints counts only"

    status = service.get_status(MESSAGE)
    assert (status.status_name, status.callback.recipient, status.callback.tracking_id) == ("Delivered", "", MESSAGE)
    assert "306900000001" not in status.callback.raw_json
    assert [(r.sender, r.text) for r in status.replies] == [("", "")]
    stream = StreamCollector(service.grpc_target, pb2.StreamStatusUpdatesRequest(after_sequence=0))
    try:
        (replayed,) = stream.wait_for(1)
        assert replayed.callback.recipient == ""
    finally:
        stream.close()
    assert post_callback(service.http_port, fixture_bodies()["01-m1-queued.json"]).status == 200, "it goes on"


@pytest.mark.parametrize("level", ["DEBUG", "INFO"])
def test_no_number_or_text_reaches_the_logs_or_the_metrics(start_service: StartService, level: str) -> None:
    """A campaign, its replies, refused bodies and reads, at every log level: the numbers and texts used appear
    in no log line and nowhere in /metrics."""
    service = start_service(*OPEN, "--log-level", level)
    for body in fixture_bodies().values():
        assert post_callback(service.http_port, body).status == 200
    headers = {"Content-Type": "application/json"}
    for body in inbound_bodies().values():
        assert http_request(service.http_port, "POST", INBOUND_PATH, body, headers=headers).status == 200
    unidentifiable = b'{"to": "+306900000001", "message": "YES please", "status": {"name": "Queued"}}'
    assert post_callback(service.http_port, unidentifiable).status == 422
    assert post_callback(service.http_port, b'{"to": "+306900000001", "trackingId": ').status == 400
    wrong_type = json.loads(fixture_bodies()["02-m1-delivered.json"])
    wrong_type["to"] = {"number": "+306900000003"}  # A field of an unexpected type: logged as adjusted.
    assert post_callback(service.http_port, json.dumps(wrong_type).encode()).status == 200
    service.get_status(MESSAGE)
    metrics = http_request(service.http_port, "GET", "/metrics").body.decode()
    documents = [json.loads(body) for body in [*fixture_bodies().values(), *inbound_bodies().values()]]
    numbers = {
        number[1:] for document in documents for key in ("to", "from") if (number := e164(document.get(key, "")))
    }
    texts = {document.get("message") for document in documents} - {None, ""}
    assert len(numbers) >= 3, numbers
    for secret in (*numbers, "6900000003", "YES please", *texts):
        assert secret not in service.log(), f"{secret!r} is in the log"
        assert secret not in metrics, f"{secret!r} is in /metrics"


@pytest.mark.parametrize("mode", ["masked", "none"])
def test_store_personal_data_keeps_only_what_it_says(start_service: StartService, database: str, mode: str) -> None:
    """With ``--store-personal-data masked`` a number keeps its country code and last three digits, with ``none``
    nothing; neither keeps a text. The service answers as ever; on SQLite no file holds what was not kept."""
    service = start_service(*OPEN, "--store-personal-data", mode, database=database)
    assert post_callback(service.http_port, fixture_bodies()["02-m1-delivered.json"]).status == 200
    reply = inbound_bodies()["01-m1-reply-text.json"]
    headers = {"Content-Type": "application/json"}
    assert http_request(service.http_port, "POST", INBOUND_PATH, reply, headers=headers).status == 200
    assert http_request(service.http_port, "POST", INBOUND_PATH, reply, headers=headers).json() == {
        "status": "duplicate"
    }, "a retry is still recognised"
    refused = b'{"to": "+306900000001", "status": {"name": "Queued"}, "body": {"text": "Spring sale: 20% off"}}'
    assert post_callback(service.http_port, refused).status == 422

    status = service.get_status(MESSAGE)
    kept = "+30*******001" if mode == "masked" else ""
    assert (status.status_name, status.callback.recipient, status.callback.price) == ("Delivered", kept, 0.0123)
    assert not status.callback.HasField("body")
    assert json.loads(status.callback.raw_json).get("to") == (kept or None)
    assert json.loads(status.callback.raw_json)["from"] == "Routee", "a sender id is no number"
    ((sender, text, raw),) = [(r.sender, r.text, json.loads(r.raw_json)) for r in status.replies]
    assert (sender, text, "message" in raw) == (kept, "", False)
    if not database.endswith(".db"):
        return
    files = [Path(database + suffix) for suffix in ("", "-wal", "-shm") if Path(database + suffix).exists()]
    for secret in (b"306900000001", b"YES please", b"20% off"):
        assert [path.name for path in files if secret in path.read_bytes()] == [], secret
