"""The Viber callback and inbound message models: every fixture, Routee's quirks, and broken variants."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.errors import InvalidCallbackError, MalformedJsonError
from service.routee.callbacks import parse_callback, parse_inbound
from support.fixtures import fixture, fixture_bodies, inbound_bodies

EXPECTED_STATUS = {
    "01-m1-queued.json": pb.MESSAGE_STATUS_QUEUED,
    "02-m1-delivered.json": pb.MESSAGE_STATUS_DELIVERED,
    "03-m1-seen.json": pb.MESSAGE_STATUS_SEEN,
    "04-m2-queued-uppercase.json": pb.MESSAGE_STATUS_QUEUED,
    "05-m2-failed-not-viber-user.json": pb.MESSAGE_STATUS_FAILED,
    "06-m3-delivered-file.json": pb.MESSAGE_STATUS_DELIVERED,
    "07-m3-expired-after-delivered.json": pb.MESSAGE_STATUS_EXPIRED,
    "08-m4-undelivered-other-campaign.json": pb.MESSAGE_STATUS_UNDELIVERED,
    "09-m5-unsent-extra-fields.json": pb.MESSAGE_STATUS_UNSENT,
}


def _encode(document: Any) -> bytes:
    return json.dumps(document).encode()


class TestFixtures:
    """Every realistic Routee callback validates and converts."""

    def test_every_fixture_is_covered(self) -> None:
        """The table of expectations names every fixture file."""
        assert set(fixture_bodies()) == set(EXPECTED_STATUS)

    @pytest.mark.parametrize(("name", "status"), sorted(EXPECTED_STATUS.items()))
    def test_fixture_converts(self, name: str, status: int) -> None:
        """Each fixture keeps its tracking id, raw status name, parsed status and raw body."""
        body = fixture_bodies()[name]
        document = json.loads(body)
        message = parse_callback(body).callback
        assert message.tracking_id == document["trackingId"]
        assert message.campaign_tracking_id == document["campaignTrackingId"]
        assert message.status.status == status
        assert message.status.name == document["status"]["name"]
        assert message.raw_json == body.decode()

    def test_all_fields_of_a_rich_callback(self) -> None:
        """A file message keeps iosFallbackText, viberFile, a decimal ttl, price and dates."""
        message = parse_callback(fixture_bodies()["06-m3-delivered-file.json"]).callback
        assert message.recipient == "+306900000003"
        assert message.sender == "Routee"
        assert list(message.groups) == ["vip", "athens"]
        assert message.country == "GR"
        assert message.status.reason.detailed_status == "Delivered"
        assert message.status.update_time.ToJsonString() == "2024-05-01T10:16:00Z"
        assert message.body.text == "Your invoice is attached"
        assert message.body.ios_fallback_text == "Invoice: https://example.com/i/42"
        assert message.body.viber_file.file_name == "invoice-42.pdf"
        assert message.body.viber_file.file_type == "pdf"
        assert message.body.viber_file.file_url == "https://example.com/files/invoice-42.pdf"
        assert not message.body.HasField("viber_action")
        assert message.ttl == 30.5
        assert message.price == pytest.approx(0.0123)
        assert message.label == "spring-sale"
        assert message.inbound_url == "https://example.com/routee/inbound"
        assert message.application_name == "default"
        assert message.direction == "Outbound"
        assert message.originating_service == "Viber"
        assert message.create_time.ToJsonString() == "2024-05-01T10:15:00Z"

    def test_action_button(self) -> None:
        """viberAction and imageURL are kept."""
        message = parse_callback(fixture_bodies()["01-m1-queued.json"]).callback
        assert message.body.image_url == "https://example.com/img/spring.png"
        assert message.body.viber_action.caption == "Shop now"
        assert message.body.viber_action.target_url == "https://example.com/shop"
        assert message.status.update_time.ToJsonString() == "2024-05-01T10:15:01Z"

    def test_nulls_and_unknown_fields(self) -> None:
        """null fields become defaults; fields Routee did not document survive in raw_json."""
        message = parse_callback(fixture_bodies()["09-m5-unsent-extra-fields.json"]).callback
        assert list(message.groups) == []
        assert message.label == ""
        assert message.body.image_url == ""
        assert json.loads(message.raw_json)["operator"] == "Cosmote"

    def test_every_secondary_field_may_be_null(self) -> None:
        """Any field but the three that identify a callback may be null, each alone or all at once."""
        secondary = {key: None for key in fixture("02-m1-delivered.json") if key not in ("trackingId", "status")}
        for key in secondary:
            document = {**fixture("02-m1-delivered.json"), key: None}
            assert parse_callback(json.dumps(document).encode()).adjusted == [], key
        document = {**fixture("02-m1-delivered.json"), **secondary}
        document["status"] = {**document["status"], "reason": None}
        parsed = parse_callback(json.dumps(document).encode())
        assert (parsed.callback.campaign_tracking_id, parsed.callback.HasField("create_time")) == ("", False)
        assert parsed.adjusted == []


class TestTolerance:
    """Routee's variations are accepted."""

    def _with(self, **changes: Any) -> dict[str, Any]:
        document = copy.deepcopy(fixture("02-m1-delivered.json"))
        for path, value in changes.items():
            target = document
            *parents, last = path.split("__")
            for parent in parents:
                target = target[parent]
            target[last] = value
        return document

    @pytest.mark.parametrize(
        ("name", "status"),
        [
            ("Delivered", pb.MESSAGE_STATUS_DELIVERED),
            ("DELIVERED", pb.MESSAGE_STATUS_DELIVERED),
            ("delivered", pb.MESSAGE_STATUS_DELIVERED),
            ("SeEn", pb.MESSAGE_STATUS_SEEN),
            ("Unsent", pb.MESSAGE_STATUS_UNSENT),
            ("Undelivered", pb.MESSAGE_STATUS_UNDELIVERED),
            ("Rejected", pb.MESSAGE_STATUS_UNKNOWN),
        ],
    )
    def test_status_names(self, name: str, status: int) -> None:
        """Names compare case-insensitively; an unknown name is UNKNOWN with the raw name kept."""
        message = parse_callback(_encode(self._with(status__name=name))).callback
        assert message.status.status == status
        assert message.status.name == name

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2024-05-01T10:15:30.123Z", "2024-05-01T10:15:30.123Z"),
            ("2016-09-19T06:04:32Z", "2016-09-19T06:04:32Z"),
            ("2016-09-19T06:04:32", "2016-09-19T06:04:32Z"),
            ("2016-09-19T08:04:32+02:00", "2016-09-19T06:04:32Z"),
            ("2016-09-18T21:34:32.5-08:30", "2016-09-19T06:04:32.500Z"),
            ("0001-01-01T01:00:00+01:00", "0001-01-01T00:00:00Z"),
            ("9999-12-31T22:59:59.999999-01:00", "9999-12-31T23:59:59.999999Z"),
        ],
    )
    def test_dates(self, text: str, expected: str) -> None:
        """Dates with or without milliseconds or offset are instants in UTC."""
        message = parse_callback(_encode(self._with(status__updatedDate=text))).callback
        assert message.status.update_time.ToJsonString() == expected

    @settings(max_examples=500, deadline=None)
    @given(
        moment=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999_999)),
        offset_minutes=st.none() | st.integers(min_value=-1439, max_value=1439),
    )
    @example(moment=datetime(1, 1, 1, 0, 59, 59, 999_999), offset_minutes=60)  # year 0 in UTC
    @example(moment=datetime(1, 1, 1, 1), offset_minutes=60)  # the first instant
    @example(moment=datetime(9999, 12, 31, 23, 30), offset_minutes=-60)  # year 10000 in UTC
    def test_a_date_is_its_instant_in_utc(self, moment: datetime, offset_minutes: int | None) -> None:
        """Any date, with or without an offset, is the instant Python's own arithmetic makes of it; one outside
        years 1-9999 in UTC is refused."""
        if offset_minutes is not None:
            moment = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
        text = moment.isoformat(timespec="microseconds")
        micros = (moment.replace(tzinfo=moment.tzinfo or UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
            microseconds=1
        )
        body = _encode(self._with(status__updatedDate=text))
        if -62_135_596_800_000_000 <= micros <= 253_402_300_799_999_999:
            update_time = parse_callback(body).callback.status.update_time
            assert (update_time.seconds, update_time.nanos) == (micros // 1_000_000, micros % 1_000_000 * 1000)
        else:
            with pytest.raises(InvalidCallbackError) as caught:
                parse_callback(body)
            assert caught.value.field == "status.updatedDate"

    def test_only_required_fields(self) -> None:
        """trackingId, status.name and status.updatedDate are enough."""
        message = parse_callback(
            b'{"trackingId": "t", "status": {"name": "Queued", "updatedDate": "2024-01-01T00:00:00Z"}}'
        ).callback
        assert message.campaign_tracking_id == ""
        assert not message.HasField("ttl")
        assert not message.HasField("price")
        assert not message.HasField("create_time")

    def test_integer_ttl_and_price(self) -> None:
        """Whole numbers are accepted where decimals are documented, and the reverse."""
        message = parse_callback(_encode(self._with(ttl=60, price=1))).callback
        assert message.ttl == 60.0
        assert message.price == 1.0


class TestRejections:
    """Broken variants are rejected with the offending field named."""

    @pytest.mark.parametrize(
        ("document", "field"),
        [
            ({"status": {"name": "Queued", "updatedDate": "2024-01-01T00:00:00Z"}}, "trackingId"),
            ({"trackingId": "", "status": {"name": "Queued", "updatedDate": "2024-01-01T00:00:00Z"}}, "trackingId"),
            ({"trackingId": "t"}, "status"),
            ({"trackingId": "t", "status": {"updatedDate": "2024-01-01T00:00:00Z"}}, "status.name"),
            ({"trackingId": "t", "status": {"name": "Queued"}}, "status.updatedDate"),
            ({"trackingId": "t", "status": {"name": "Queued", "updatedDate": "yesterday"}}, "status.updatedDate"),
            ({"trackingId": "t", "status": {"name": "Queued", "updatedDate": 1700000000}}, "status.updatedDate"),
            ({"trackingId": 42, "status": {"name": "Queued", "updatedDate": "2024-01-01T00:00:00Z"}}, "trackingId"),
            ({"trackingId": "t\u0000", "status": {"name": "Q", "updatedDate": "2024-01-01T00:00:00Z"}}, "trackingId"),
            ({"trackingId": "t", "status": {"name": "Q\u0000", "updatedDate": "2024-01-01T00:00:00Z"}}, "status.name"),
            ({"trackingId": "t", "status": "Delivered"}, "status"),
            ([1, 2], ""),
        ],
    )
    def test_invalid_callbacks(self, document: Any, field: str) -> None:
        """JSON that is not a Viber callback names its first offending field."""
        with pytest.raises(InvalidCallbackError) as caught:
            parse_callback(_encode(document))
        assert caught.value.field == field

    @pytest.mark.parametrize(
        "body", [b"", b"not json", b'{"trackingId": ', b"\xff\xfe{}", b'{"trackingId": "\xff"}', b"{'a': 1}"]
    )
    def test_malformed_json(self, body: bytes) -> None:
        """A body that is not JSON (or not UTF-8) is malformed, not invalid."""
        with pytest.raises(MalformedJsonError):
            parse_callback(body)

    @pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
    def test_non_finite_numbers_are_not_prices(self, number: str) -> None:
        """NaN and infinities are not prices: the price is left unset, the callback is kept."""
        status = '{"name": "Q", "updatedDate": "2024-01-01T00:00:00Z"}'
        parsed = parse_callback(f'{{"trackingId": "t", "price": {number}, "status": {status}}}'.encode())
        assert not parsed.callback.HasField("price")
        assert parsed.adjusted == [("price", "dropped")]


class TestTolerantFields:
    """Only trackingId, status.name and status.updatedDate can refuse a callback; the rest is coerced or dropped."""

    def _parse(self, **changes: Any) -> Any:
        document = copy.deepcopy(fixture("02-m1-delivered.json"))
        for path, value in changes.items():
            target = document
            *parents, last = path.split("__")
            for parent in parents:
                target = target[parent]
            target[last] = value
        return parse_callback(_encode(document))

    @pytest.mark.parametrize(
        ("changes", "check", "adjusted"),
        [
            ({"ttl": "3600"}, lambda m: m.ttl == 3600.0, [("ttl", "coerced")]),
            ({"price": "0.01"}, lambda m: m.price == 0.01, [("price", "coerced")]),
            ({"price": " 1e-3 "}, lambda m: m.price == 0.001, [("price", "coerced")]),
            ({"groups": "vip"}, lambda m: list(m.groups) == ["vip"], [("groups", "coerced")]),
            ({"groups": ["vip", 7, None]}, lambda m: list(m.groups) == ["vip", "7"], [("groups", "coerced")]),
            ({"createdAt": "garbage"}, lambda m: not m.HasField("create_time"), [("createdAt", "dropped")]),
            ({"createdAt": 1714558500}, lambda m: not m.HasField("create_time"), [("createdAt", "dropped")]),
            (
                {"status__reason": "Not Viber User"},
                lambda m: m.status.reason.detailed_status == "Not Viber User",
                [("status.reason", "coerced")],
            ),
            ({"body": "hi"}, lambda m: not m.HasField("body"), [("body", "dropped")]),
            ({"body": []}, lambda m: not m.HasField("body"), [("body", "dropped")]),
            ({"ttl": "long"}, lambda m: not m.HasField("ttl"), [("ttl", "dropped")]),
            ({"price": True}, lambda m: not m.HasField("price"), [("price", "dropped")]),
            ({"campaignTrackingId": 42}, lambda m: m.campaign_tracking_id == "42", [("campaignTrackingId", "coerced")]),
            (
                {"campaignTrackingId": "c\u0000"},
                lambda m: m.campaign_tracking_id == "",
                [("campaignTrackingId", "dropped")],
            ),
            ({"to": 306900000001}, lambda m: m.recipient == "306900000001", [("to", "coerced")]),
            ({"label": {"a": 1}}, lambda m: m.label == "", [("label", "dropped")]),
            (
                {"body__viberAction": "Shop"},
                lambda m: not m.body.HasField("viber_action"),
                [("body.viberAction", "dropped")],
            ),
            ({"body__text": 5}, lambda m: m.body.text == "5", [("body.text", "coerced")]),
            (
                {"status__reason__description": False},
                lambda m: m.status.reason.description == "",
                [("status.reason.description", "dropped")],
            ),
        ],
    )
    def test_a_secondary_field_of_an_unexpected_type_never_refuses_the_callback(
        self, changes: dict[str, Any], check: Any, adjusted: list[tuple[str, str]]
    ) -> None:
        """Coerced where unambiguous, otherwise unset; raw_json keeps the original; the adjustment is reported."""
        parsed = self._parse(**changes)
        assert check(parsed.callback)
        assert parsed.adjusted == adjusted
        original = json.loads(parsed.callback.raw_json)
        for path, value in changes.items():
            for part in path.split("__"):
                original = original[part]
            assert original == value, "raw_json keeps what Routee sent"

    def test_nothing_is_adjusted_in_a_well_formed_callback(self) -> None:
        """Every fixture parses with no adjustment."""
        for body in fixture_bodies().values():
            assert parse_callback(body).adjusted == []


class TestInboundMessages:
    """Routee's inbound messages (replies): required ``from`` and ``sentDate``, everything else tolerated."""

    def test_a_text_reply_keeps_every_field(self) -> None:
        body = inbound_bodies()["01-m1-reply-text.json"]
        parsed = parse_inbound(body)
        message = parsed.message
        assert parsed.adjusted == []
        assert (message.sender, message.recipient, message.text) == (
            "+306900000001",
            "Routee",
            "YES please, keep me posted",
        )
        assert message.send_time.ToJsonString() == "2024-05-01T10:20:31.393Z"
        assert (message.campaign_name, message.label, message.direction) == ("Spring sale", "spring-sale", "Inbound")
        assert message.campaign_tracking_id == "c0ffee00-0000-4000-8000-0000000000a1"
        assert message.reference_tracking_id == "a1b2c3d4-0000-4000-8000-000000000001"
        assert message.raw_json == body.decode()
        assert message.sequence == 0, "the store gives the sequence"

    def test_file_name_is_taken_in_either_spelling(self) -> None:
        """Routee's example spells it ``filename``, its field table ``fileName``."""
        with_file = parse_inbound(inbound_bodies()["02-m1-reply-file.json"]).message
        assert (with_file.file_name, with_file.media_url) == (
            "receipt.jpg",
            "https://media.example.com/viber/7f3a/receipt.jpg",
        )
        lower = parse_inbound(b'{"from": "+30", "sentDate": "2024-05-01T10:00:00Z", "filename": "a.pdf"}').message
        assert lower.file_name == "a.pdf"

    def test_nulls_and_unknown_fields(self) -> None:
        parsed = parse_inbound(inbound_bodies()["03-m4-reply-other-campaign.json"])
        assert parsed.adjusted == []
        assert (parsed.message.media_url, parsed.message.file_name, parsed.message.label) == ("", "", "")
        assert "newFieldRouteeAddedLater" in parsed.message.raw_json

    def test_only_from_and_sent_date_are_required(self) -> None:
        message = parse_inbound(b'{"from": 306900000001, "sentDate": "2024-05-01T10:00:00"}').message
        assert message.sender == "306900000001", "a number sent as a JSON number is the number"
        assert message.send_time.ToJsonString() == "2024-05-01T10:00:00Z"

    @pytest.mark.parametrize(
        ("document", "field"),
        [
            ({"sentDate": "2024-05-01T10:00:00Z"}, "from"),
            ({"from": "", "sentDate": "2024-05-01T10:00:00Z"}, "from"),
            ({"from": "+30"}, "sentDate"),
            ({"from": "+30", "sentDate": "yesterday"}, "sentDate"),
            ({"from": "+30", "sentDate": 1714557600}, "sentDate"),
        ],
    )
    def test_a_reply_that_cannot_be_identified_is_refused(self, document: dict[str, Any], field: str) -> None:
        with pytest.raises(InvalidCallbackError) as refused:
            parse_inbound(_encode(document))
        assert refused.value.field == field

    def test_secondary_fields_of_an_unexpected_type_are_coerced_or_dropped(self) -> None:
        parsed = parse_inbound(
            _encode(
                {
                    "from": "+30",
                    "sentDate": "2024-05-01T10:00:00Z",
                    "message": 42,
                    "referenceTrackingId": ["a"],
                    "campaignTrackingId": "c\u0000",
                }
            )
        )
        assert parsed.message.text == "42"
        assert parsed.message.reference_tracking_id == ""
        assert sorted(parsed.adjusted) == [
            ("inbound.campaignTrackingId", "dropped"),
            ("inbound.message", "coerced"),
            ("inbound.referenceTrackingId", "dropped"),
        ]


def _with_escape(document: dict[str, Any], *path: str) -> bytes:
    """The document as JSON with the text at ``path`` a lone surrogate escape (valid JSON, no character)."""
    document = copy.deepcopy(document)
    target = document
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = "PLACEHOLDER"
    return json.dumps(document).replace('"PLACEHOLDER"', '"a\\ud83db"').encode()


class TestOddText:
    """A lone surrogate escape or a byte-order mark refuses a body only in an identity field."""

    @pytest.mark.parametrize("path", [("to",), ("body", "text"), ("status", "reason", "description"), ("extra",)])
    def test_a_lone_surrogate_in_a_secondary_field_is_replaced(self, path: tuple[str, ...]) -> None:
        body = _with_escape(fixture("01-m1-queued.json"), *path)
        callback = parse_callback(body).callback
        assert callback.tracking_id == fixture("01-m1-queued.json")["trackingId"]
        assert callback.raw_json == body.decode()  # Kept as it came, escape and all.
        if path == ("to",):
            assert callback.recipient == "a\ufffdb"

    @pytest.mark.parametrize("path", [("trackingId",), ("status", "name"), ("status", "updatedDate")])
    def test_a_lone_surrogate_in_an_identity_field_refuses_it(self, path: tuple[str, ...]) -> None:
        with pytest.raises(InvalidCallbackError) as caught:
            parse_callback(_with_escape(fixture("01-m1-queued.json"), *path))
        assert caught.value.field == ".".join(path)

    def test_a_byte_order_mark_is_tolerated(self) -> None:
        body = b"\xef\xbb\xbf" + fixture_bodies()["01-m1-queued.json"]
        callback = parse_callback(body).callback
        assert callback.status.name == "Queued"
        assert callback.raw_json == body.decode()

    def test_inbound_messages_likewise(self) -> None:
        reply = json.loads(next(iter(inbound_bodies().values())))
        assert parse_inbound(_with_escape(reply, "message")).message.text == "a\ufffdb"
        with pytest.raises(InvalidCallbackError) as caught:
            parse_inbound(_with_escape(reply, "from"))
        assert caught.value.field == "from"

    def test_what_is_still_not_json_is_refused(self) -> None:
        for body in (b"\xef\xbb\xbf{", b'{"trackingId": "\xff"}', b"[" * 5000 + b"]" * 5000):
            with pytest.raises((MalformedJsonError, InvalidCallbackError)):
                parse_callback(body)
