"""The API's presentation of stored entries: protobuf messages and serialized stream items."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from routee.callbacks.v1 import message_status_service_pb2 as pb2
from service.domain.entries import PartState, StoredEvent, StoredInbound
from service.domain.rules import SMS


def timestamp_from_micros(micros: int) -> Timestamp:
    """Build a protobuf Timestamp from microseconds since the epoch (what the store keeps is in its range)."""
    return Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000)


def status_update(event: StoredEvent) -> pb2.StatusUpdate:
    """Build the StatusUpdate of a stored event, with its full callback."""
    update = pb2.StatusUpdate(
        sequence=event.sequence,
        tracking_id=event.tracking_id,
        campaign_tracking_id=event.campaign_tracking_id,
        status=event.status,  # type: ignore[arg-type]
        status_name=event.status_name,
        update_time=timestamp_from_micros(event.update_us),
        receive_time=timestamp_from_micros(event.receive_us),
        is_current=event.is_current,
        previous_status=event.previous_status,  # type: ignore[arg-type]
        source=event.source,  # type: ignore[arg-type]
        channel=event.channel,  # type: ignore[arg-type]
        part=event.part,
        message_status=event.message_status,  # type: ignore[arg-type]
    )
    (update.sms_callback if event.channel == SMS else update.callback).MergeFromString(event.callback)
    return update


def stream_item(event: StoredEvent) -> bytes:
    """Serialize a stored event as one StreamStatusUpdatesResponse."""
    return pb2.StreamStatusUpdatesResponse(status_update=status_update(event)).SerializeToString()


def inbound_stream_item(entry: StoredInbound) -> bytes:
    """Serialize a stored inbound message as one StreamInboundMessagesResponse."""
    item = pb2.StreamInboundMessagesResponse()
    item.inbound_message.MergeFromString(entry.message)
    item.inbound_message.channel = entry.channel  # type: ignore[assignment]  # Kept before channels: Viber.
    return item.SerializeToString()


def status_event(event: StoredEvent) -> pb2.StatusEvent:
    """Build the history entry of a stored event."""
    return pb2.StatusEvent(
        status=event.status,  # type: ignore[arg-type]
        status_name=event.status_name,
        update_time=timestamp_from_micros(event.update_us),
        sequence=event.sequence,
        receive_time=timestamp_from_micros(event.receive_us),
        source=event.source,  # type: ignore[arg-type]
        channel=event.channel,  # type: ignore[arg-type]
        part=event.part,
    )


def sms_part(part: PartState) -> pb2.SmsPart:
    """Build an SMS part from its stored state."""
    return pb2.SmsPart(
        part=part.part,
        sms_id=part.sms_id,
        status=part.status,  # type: ignore[arg-type]
        status_name=part.status_name,
        update_time=timestamp_from_micros(part.update_us),
        sequence=part.sequence,
    )
