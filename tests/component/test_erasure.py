"""Erasing one person (``routee-callbacks forget``), on both engines: what it changes, what it keeps, and that
no byte of the number or of what they wrote is left in the database's files."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from routee.callbacks.v1 import callback_pb2 as pb
from service.cli.forget import forget
from service.routee.callbacks import parse_callback, parse_inbound
from service.routee.privacy import e164, mentions
from service.store import AppendInbound, AppendStatus, Quarantine, Store, is_postgres, open_store
from support.fixtures import fixture_bodies, inbound_bodies
from support.postgres import PostgresServer

NOW_US = 1_700_000_000_000_000
NUMBER = "+306900000001"
DIGITS = NUMBER[1:].encode()
REPLY_TEXT = b"YES please, keep me posted"
OTHER = "+306900000002"


def _callback(tracking_id: str, recipient: str) -> pb.ViberCallback:
    document = json.loads(fixture_bodies()["02-m1-delivered.json"])
    document.update(trackingId=tracking_id, to=recipient)
    return parse_callback(json.dumps(document).encode()).callback


def _reply(sender: str, text: str, reference: str) -> pb.InboundMessage:
    document = json.loads(inbound_bodies()["01-m1-reply-text.json"])
    document.update({"from": sender, "message": text, "referenceTrackingId": reference})
    return parse_inbound(json.dumps(document).encode()).message


async def _filled(database: str) -> None:
    """The database with two people's callbacks and replies, and a refused body naming the first."""
    store = open_store(database)
    store.open()
    try:
        await _fill(store)
    finally:
        await store.close()


async def _fill(store: Store) -> None:
    """Two people's callbacks and replies, and a refused body that names the first in another form."""
    jobs = [
        AppendStatus(_callback("mine-1", NUMBER)),
        AppendStatus(_callback("mine-2", "0030 690 000 0001")),
        AppendStatus(_callback("theirs-1", OTHER)),
        AppendInbound(_reply(NUMBER, REPLY_TEXT.decode(), "mine-1")),
        AppendInbound(_reply(OTHER, "a reply that stays", "theirs-1")),
        Quarantine(b'{"to": "+30 690 000 0001", "status": "??"}', "127.0.0.1", 422, "invalid_callback", "", 10**6),
        Quarantine(b'{"to": "+306900000002"}', "127.0.0.1", 422, "invalid_callback", "", 10**6),
    ]
    await store.write(jobs, NOW_US)


def _files(database: str, postgres: PostgresServer | None) -> list[Path]:
    """Every file the database's data lives in: SQLite's file, log and index; PostgreSQL's directory of it."""
    if postgres is None:
        return [Path(database + suffix) for suffix in ("", "-wal", "-shm") if Path(database + suffix).exists()]
    with psycopg.connect(database) as connection:
        row = connection.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()
    assert row is not None
    postgres.execute("CHECKPOINT")  # What the server holds in memory reaches its files.
    return [path for path in (postgres.directory / "data" / "base" / str(row[0])).iterdir() if path.is_file()]


def _found(files: list[Path], needle: bytes) -> list[str]:
    return [path.name for path in files if needle in path.read_bytes()]


class TestNumbers:
    """Numbers are compared in E.164 form."""

    @pytest.mark.parametrize("written", ["+306900000001", "+30 690 000 0001", "0030690-000-0001", "306900000001"])
    def test_the_usual_ways_of_writing_a_number_are_one_number(self, written: str) -> None:
        assert e164(written) == NUMBER

    @pytest.mark.parametrize("written", ["Routee", "", "+", "12345", "0690000001", "+3069000000012345678"])
    def test_what_is_no_number_is_none(self, written: str) -> None:
        assert e164(written) is None

    def test_a_body_mentions_a_number_in_any_form_but_not_a_longer_one(self) -> None:
        assert mentions(b'{"to": "0030 690 000 0001"}', NUMBER)
        assert not mentions(b'{"to": "+3069000000019"}', NUMBER)


class TestForget:
    """``forget`` erases one number everywhere and keeps what is not personal."""

    async def test_the_number_and_its_texts_leave_every_file_and_the_rest_stays(
        self, database: str, request: pytest.FixtureRequest
    ) -> None:
        postgres = request.getfixturevalue("postgres") if is_postgres(database) else None
        await _filled(database)
        before = _files(database, postgres)
        assert _found(before, DIGITS), "the control: the number was in the files"
        assert _found(before, REPLY_TEXT), "the control: the reply's text was in the files"

        erased = await forget(open_store(database, secure_delete=True), NUMBER)

        assert (erased.callbacks, erased.replies, erased.quarantined) == (2, 1, 1)
        after = _files(database, postgres)
        assert _found(after, DIGITS) == []
        assert _found(after, b"690 000 0001") == []
        assert _found(after, REPLY_TEXT) == []
        store = open_store(database)
        store.open()
        try:
            mine = await store.message("mine-1")
            assert mine is not None
            assert (mine.current.status_name, mine.current.status) == ("Delivered", pb.MESSAGE_STATUS_DELIVERED)
            kept = pb.ViberCallback.FromString(mine.current.callback)
            assert (kept.recipient, kept.tracking_id, kept.price) == ("", "mine-1", pytest.approx(0.0123))
            assert "to" not in json.loads(kept.raw_json)
            (answer,) = [pb.InboundMessage.FromString(reply.message) for reply in mine.replies]
            assert (answer.sender, answer.text, answer.reference_tracking_id) == ("", "", "mine-1")
            assert "message" not in json.loads(answer.raw_json)
            theirs = await store.message("theirs-1")
            assert theirs is not None
            assert pb.ViberCallback.FromString(theirs.current.callback).recipient == OTHER
            assert [pb.InboundMessage.FromString(r.message).text for r in theirs.replies] == ["a reply that stays"]
            assert [item.body for item in await store.quarantined()] == [b'{"to": "+306900000002"}']
            replayed = await store.entries_after(0, 100)  # What a resumed stream reads: the erased form.
            assert not any(DIGITS in (getattr(entry, "callback", b"") or entry.message) for entry in replayed)
            summary = await store.campaign_summary("c0ffee00-0000-4000-8000-0000000000a1")
            assert summary is not None
            assert summary.counts == {pb.MESSAGE_STATUS_DELIVERED: 3}, "campaign counts stay exact"
        finally:
            await store.close()

    async def test_a_number_nobody_has_changes_nothing(self, database: str) -> None:
        await _filled(database)
        erased = await forget(open_store(database, secure_delete=True), "+15550100000")
        assert (erased.callbacks, erased.replies, erased.quarantined) == (0, 0, 0)
