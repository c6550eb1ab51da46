"""The frames between workers and the writer process."""

from __future__ import annotations

import pytest

from routee.callbacks.v1 import callback_pb2 as pb
from service import ipc
from service.broker import Update
from service.errors import InvalidCallbackError, MalformedJsonError, StoreUnavailableError


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
        """A kept body's sequence (None for a duplicate) and tracking id come back."""
        [(kind, payload)] = ipc.frames(bytearray(ipc.kept(5, sequence, "m-1")))
        assert kind == ipc.KEPT
        assert ipc.parse_kept(payload) == (5, expected, "m-1")

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


class TestFeed:
    """The log as pushed to workers."""

    def test_updates_round_trip_with_their_stream_items(self) -> None:
        """Routing fields and the serialized item survive, in order."""
        updates = [
            Update(1, "c1", pb.MESSAGE_STATUS_QUEUED, payload=b"first"),
            Update(2, "", pb.MESSAGE_STATUS_SEEN, payload=b"\x00second\xff"),
            Update(3, "kampanja-\u00e9", pb.MESSAGE_STATUS_UNKNOWN, payload=b""),
        ]
        [(kind, payload)] = ipc.frames(bytearray(ipc.feed(updates)))
        assert kind == ipc.FEED
        back = ipc.parse_feed(payload)
        assert [(u.sequence, u.campaign_tracking_id, u.status, u.payload) for u in back] == [
            (u.sequence, u.campaign_tracking_id, u.status, u.payload) for u in updates
        ]
