"""End to end: what an allowed sender's body was refused for is kept, listed, replayed into the log and dropped
with the command line, against the running service's own database (either engine)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from conftest import StartService
from routee.callbacks.v1 import callback_pb2 as pb
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from support.fixtures import fixture_bodies, sms_bodies
from support.network import SMS_PATH, http_request, post_callback
from support.service_process import OPEN, executable
from support.streams import StreamCollector

pytestmark = pytest.mark.e2e


def quarantine(database: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [executable(), "quarantine", *args, "--database", database], capture_output=True, text=True, timeout=60
    )


def listed(database: str) -> list[dict[str, Any]]:
    result = quarantine(database, "list", "--json")
    assert result.returncode == 0, result.stderr
    items: list[dict[str, Any]] = json.loads(result.stdout)
    return items


def test_refused_bodies_are_kept_listed_replayed_and_dropped(start_service: StartService, database: str) -> None:
    """A 422 and a 415 from allowed senders are in `quarantine list`; a retry raises the attempt count; a
    stranger's 403 is not kept; `replay` stores what passes today and a stream of the running service gets it;
    `drop` empties the rest."""
    service = start_service(*OPEN, database=database)
    stream = StreamCollector(service.grpc_target, pb2.StreamStatusUpdatesRequest())
    unidentifiable = b'{"trackingId": "q-1", "status": {"name": "Queued"}}'
    for _ in range(2):
        assert post_callback(service.http_port, unidentifiable, source="127.0.0.2").status == 422
    readable = fixture_bodies()["01-m1-queued.json"]
    assert post_callback(service.http_port, readable, source="127.0.0.3", Content_Type="text/plain").status == 415

    items = listed(database)
    assert [(item["status"], item["reason"], item["peer"], item["attempts"]) for item in items] == [
        (422, "invalid_callback", "127.0.0.2", 2),
        (415, "unsupported_media_type", "127.0.0.3", 1),
    ]
    assert items[0]["body"] == unidentifiable.decode()
    assert {"id", "received_at"} <= set(items[0])
    metrics = http_request(service.http_port, "GET", "/metrics").body.decode()
    assert "routee_callbacks_quarantined_bodies" in metrics

    replayed = quarantine(database, "replay", "--all")
    assert replayed.returncode == 1, "one body still fails, and the command says so"
    assert f"replayed {items[1]['id']}: stored as sequence 1" in replayed.stdout
    assert f"still refused {items[0]['id']}: invalid_callback" in replayed.stdout
    [update] = stream.wait_for(1, timeout=15)  # Written by the command, found in the log by the service.
    assert update.tracking_id == json.loads(readable)["trackingId"]
    assert [item["id"] for item in listed(database)] == [items[0]["id"]]

    dropped = quarantine(database, "drop", "--all")
    assert (dropped.returncode, dropped.stdout.strip()) == (0, "dropped 1")
    assert listed(database) == []
    stream.close()


def test_no_secret_of_the_database_uri_is_printed(start_service: StartService, pg_database: str) -> None:
    """A password given in the URI's query string reaches neither the service's log (its ``writer started`` line
    names the database) nor the command line's error about a database it cannot reach."""
    service = start_service(*OPEN, database=f"{pg_database}?password=s3cret-in-query")
    assert post_callback(service.http_port, fixture_bodies()["01-m1-queued.json"]).status == 200
    service.stop()
    assert "writer started" in service.log()
    assert "s3cret" not in service.log()
    unreachable = "postgresql://routee:s3cret-in-userinfo@127.0.0.1:1/routee?sslpassword=s3cret-in-query"
    result = quarantine(unreachable, "list")
    assert result.returncode != 0
    assert "s3cret" not in result.stdout + result.stderr
    assert "routee:***@127.0.0.1:1/routee?sslpassword=***" in result.stderr


def test_a_refused_sms_report_is_kept_as_one_and_replayed_through_the_sms_rules(
    start_service: StartService, database: str
) -> None:
    """An SMS report sent with the wrong Content-Type is kept as kind ``sms``; replayed, it is read as an SMS
    report (not a Viber callback) and its message gets its status."""
    service = start_service(*OPEN, database=database)
    body = sms_bodies()["05-s2-part1-delivered.json"]
    assert post_callback(service.http_port, body, path=SMS_PATH, Content_Type="text/plain").status == 415
    [item] = listed(database)
    assert (item["kind"], item["reason"]) == ("sms", "unsupported_media_type")
    replayed = quarantine(database, "replay", "--all")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    response = service.get_status("5e1f0000-0000-4000-8000-000000000002")
    assert (response.channel, [part.part for part in response.parts]) == (pb.CHANNEL_SMS, [1])
