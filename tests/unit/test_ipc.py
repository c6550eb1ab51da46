"""The frames between workers and the writer process."""

from __future__ import annotations

import pytest

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.entries import Entry, StoredEvent, StoredInbound
from service.domain.errors import InvalidCallbackError, MalformedJsonError, StoreUnavailableError, UnsupportedMediaError
from service.domain.rules import INBOUND
from service.log import ipc


class TestFrames:
    """Framing a byte stream."""

    def test_frames_split_anywhere_come_out_whole(self) -> None:
        """Whatever the socket hands over, complete frames come out in order and the rest waits."""
        stream = ipc.request(ipc.SUBMIT_STATUS, 1, b"body-one") + ipc.request(ipc.PROBE, 2)
        buffer = bytearray()
        received = []
        for byte in stream:
            buffer.append(byte)
            received.extend((kind, ipc.parse_request(payload)) for kind, payload in ipc.frames(buffer))
        assert received == [(ipc.SUBMIT_STATUS, (1, b"body-one")), (ipc.PROBE, (2, b""))]
        assert buffer == bytearray()

    def test_an_oversized_frame_is_refused(self) -> None:
        """A length over the limit is an error, not an allocation."""
        with pytest.raises(ipc.FrameError):
            list(ipc.frames(bytearray(b"\xff\xff\xff\xff\x01")))


class TestAnswers:
    """Results and errors round-trip."""

    @pytest.mark.parametrize(("sequence", "expected"), [(17, 17), (None, None)])
    def test_kept(self, sequence: int | None, expected: int | None) -> None:
        """A kept body's sequence (None for a duplicate) comes back with its request id."""
        [(kind, payload)] = ipc.frames(bytearray(ipc.kept(5, sequence)))
        assert kind == ipc.KEPT
        assert ipc.parse_kept(payload) == (5, expected)

    @pytest.mark.parametrize(
        "error",
        [
            InvalidCallbackError("status.updatedDate", "Field required"),
            MalformedJsonError("the body is not valid JSON"),
            StoreUnavailableError("the store cannot write: disk full"),
        ],
    )
    def test_errors_are_rebuilt_from_their_reason(self, error: Exception) -> None:
        """An error crosses as its reason and comes back as the same kind, with its message and field."""
        [(_, payload)] = ipc.frames(bytearray(ipc.failed(9, error)))  # type: ignore[arg-type]
        request_id, rebuilt = ipc.parse_failed(payload)
        assert request_id == 9
        assert type(rebuilt) is type(error)
        assert str(rebuilt) == str(error)
        assert getattr(rebuilt, "field", None) == getattr(error, "field", None)


class TestRefusals:
    """A body a worker refused, on its way to the quarantine."""

    def test_a_refusal_carries_the_sender_the_error_and_the_body(self) -> None:
        """Everything the quarantine records survives the trip."""
        error = UnsupportedMediaError("Content-Type must be application/json, got text/plain")
        [(kind, payload)] = ipc.frames(bytearray(ipc.refusal(4, "2001:db8::1", error, b"\x00raw", INBOUND)))
        request_id, peer, rebuilt, body, body_kind = ipc.parse_refusal(payload)
        assert (kind, request_id, peer, body, body_kind) == (ipc.REFUSE, 4, "2001:db8::1", b"\x00raw", INBOUND)
        assert isinstance(rebuilt, UnsupportedMediaError)
        assert str(rebuilt) == str(error)


class TestFeed:
    """The log as pushed to workers."""

    def test_stored_entries_round_trip_field_by_field(self) -> None:
        """Every field of both kinds of entry survives, in order, whatever the text and bytes hold."""
        events: list[Entry] = [
            StoredEvent(
                1, "m-1", "c1", pb.MESSAGE_STATUS_QUEUED, "Queued", 1_714_557_600_000_000, 5, True, b"\x08\x01"
            ),
            StoredEvent(2, "m-\u00e9", "", pb.MESSAGE_STATUS_SEEN, "seen", -1, 0, True, b"\x00\xff", 2, 2),
            StoredInbound(3, "c1", "m-1", 7, b"\x08\x03\x12\x01+"),
            StoredEvent(4, "m-3", "kampanja", pb.MESSAGE_STATUS_UNKNOWN, "Whatever", 0, 0, True, b""),
            StoredInbound(5, "", "", 0, b""),
        ]
        [(kind, payload)] = ipc.frames(bytearray(ipc.feed(events)))
        assert kind == ipc.FEED
        frame = ipc.FeedFrame(payload)
        assert (frame.first, frame.last) == (1, 5)
        assert frame.entries() == events
