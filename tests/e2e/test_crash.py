"""Crash safety: a 200 is a promise. SIGKILL the whole service under load, restart it, check nothing answered 200
is gone and the database is intact.

CI runs a few rounds; ``make stress`` runs many more (``ROUTEE_CALLBACKS_CRASH_ROUNDS``).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

import grpc
import pytest

from conftest import StartService
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from routee.callbacks.v1 import message_status_service_pb2_grpc as pb2_grpc
from support.fixtures import fixture
from support.network import CALLBACKS_PATH
from support.service_process import OPEN

pytestmark = pytest.mark.e2e

ROUNDS = int(os.environ.get("ROUTEE_CALLBACKS_CRASH_ROUNDS", "3"))
SENDERS = 8
STATUSES = ("Queued", "Delivered", "Seen")


class Sender(threading.Thread):
    """Posts distinct callbacks (each message Queued, Delivered, Seen) from its own source address until it fails
    or is told to stop; remembers every (tracking id, status) answered 200."""

    def __init__(self, port: int, name: str, source: str, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.port, self.source, self.stop_sending = port, source, stop
        self.acknowledged: list[tuple[str, str]] = []
        self.template = fixture("01-m1-queued.json")

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5, source_address=(self.source, 0))
        try:
            self._send(connection)
        finally:
            connection.close()

    def _send(self, connection: http.client.HTTPConnection) -> None:
        number = 0
        while not self.stop_sending.is_set():
            tracking_id = f"{self.name}-{number // len(STATUSES)}"
            status = STATUSES[number % len(STATUSES)]
            body = {**self.template, "trackingId": tracking_id}
            body["status"] = {**body["status"], "name": status, "updatedDate": f"2024-05-01T10:15:{number % 3:02d}Z"}
            try:
                connection.request("POST", CALLBACKS_PATH, json.dumps(body), {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                return  # The service is gone; what had no answer was never promised.
            if response.status == 200:
                self.acknowledged.append((tracking_id, status))
            number += 1


def test_no_acknowledged_callback_is_lost_across_sigkills(start_service: StartService, tmp_path: Path) -> None:
    """Load from 8 senders, SIGKILL master and worker at a random moment, restart on the same file; repeat."""
    database = tmp_path / "crash.db"
    rng = random.Random(7)
    acknowledged: list[tuple[str, str]] = []
    for round_number in range(ROUNDS):
        service = start_service(*OPEN, database=database)
        stop = threading.Event()
        senders = [
            Sender(service.http_port, f"r{round_number}s{index}", f"127.0.0.{index + 2}", stop)
            for index in range(SENDERS)
        ]
        for sender in senders:
            sender.start()
        time.sleep(rng.uniform(0.5, 2.5))
        service.stop(signal.SIGKILL)
        stop.set()
        for sender in senders:
            sender.join(10)
            acknowledged.extend(sender.acknowledged)

    service = start_service(*OPEN, database=database)
    expected: dict[str, set[str]] = {}
    for tracking_id, status in acknowledged:
        expected.setdefault(tracking_id, set()).add(status)
    missing = []
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = pb2_grpc.MessageStatusServiceStub(channel)
        ids = sorted(expected)
        for start in range(0, len(ids), 200):
            futures = {
                tracking_id: stub.GetMessageStatus.future(
                    pb2.GetMessageStatusRequest(tracking_id=tracking_id), timeout=30
                )
                for tracking_id in ids[start : start + 200]
            }
            for tracking_id, future in futures.items():
                if future.exception() is None:
                    stored = {event.status_name for event in future.result().events}
                else:
                    assert future.code() == grpc.StatusCode.NOT_FOUND, future.exception()
                    stored = set()
                missing.extend((tracking_id, status) for status in expected[tracking_id] - stored)
    service.stop()

    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored_events = connection.execute("SELECT count(*) FROM events").fetchone()[0]
    print(
        f"\ncrash test: {ROUNDS} SIGKILLs, {len(acknowledged)} callbacks acknowledged, {len(missing)} lost,"
        f" {stored_events} events stored"
    )
    assert len(acknowledged) > 100 * ROUNDS, "the load was too small to mean anything"
    assert missing == []
