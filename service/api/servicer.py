"""The MessageStatusService: its state and RPCs (following a stream is ``following``'s), and the one place
errors become gRPC status codes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc

from routee.callbacks.v1 import callback_pb2 as pb
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from service.api import page_tokens
from service.api.broker import Broker
from service.api.convert import sms_part, status_event, timestamp_from_micros
from service.api.following import Follower, Streams
from service.domain.entries import EventFilter, MessageState
from service.domain.errors import (
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    RejectedError,
    ResourceExhaustedError,
    RouteeCallbacksError,
    UnavailableError,
)
from service.domain.limits import MAX_BATCH_IDS, MAX_ID_LENGTH, MAX_PAGE_SIZE
from service.domain.rules import CHANNELS, SMS
from service.monitoring.metrics import Metrics
from service.store import LogReader

_LOGGER = logging.getLogger("service.servicer")

SERVICE_NAME = pb2.DESCRIPTOR.services_by_name["MessageStatusService"].full_name
DEFAULT_PAGE = 100
_T = TypeVar("_T")

_CODES: dict[type[RouteeCallbacksError], grpc.StatusCode] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    OutOfRangeError: grpc.StatusCode.OUT_OF_RANGE,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
}


def grpc_code(error: RouteeCallbacksError) -> grpc.StatusCode:
    """Map an error of the tree to its gRPC status code."""
    for kind, code in _CODES.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INVALID_ARGUMENT if isinstance(error, RejectedError) else grpc.StatusCode.INTERNAL


class MessageStatusServicer:
    """Serves message status from the store and live updates from the broker."""

    def __init__(
        self,
        store: LogReader,
        broker: Broker,
        metrics: Metrics,
        *,
        max_streams: int,
        progress_interval: float,
        max_streams_per_client: int | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._streams = Streams(metrics, max_streams=max_streams, max_per_client=max_streams_per_client or max_streams)
        self._follower = Follower(store, broker, metrics, progress_interval=progress_interval)

    async def GetMessageStatus(  # noqa: N802 (the RPC's name)
        self, request: pb2.GetMessageStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb2.GetMessageStatusResponse:
        """Return the current status and history of one message."""
        return await _abort_on_error(context, self._get_message_status(request))

    async def _get_message_status(self, request: pb2.GetMessageStatusRequest) -> pb2.GetMessageStatusResponse:
        _check_id("tracking_id", request.tracking_id)
        state = await self._store.message(request.tracking_id)
        if state is None:
            raise NotFoundError(f"no callback received for tracking_id {request.tracking_id!r}")
        return _message_status(state)

    async def BatchGetMessageStatuses(  # noqa: N802 (the RPC's name)
        self, request: pb2.BatchGetMessageStatusesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb2.BatchGetMessageStatusesResponse:
        """Return the current status of many messages, in the order asked, and the ids never seen."""
        return await _abort_on_error(context, self._batch_get(request))

    async def _batch_get(self, request: pb2.BatchGetMessageStatusesRequest) -> pb2.BatchGetMessageStatusesResponse:
        ids = list(request.tracking_ids)
        if not ids:
            raise InvalidArgumentError("tracking_ids is required")
        if len(ids) > MAX_BATCH_IDS:
            raise InvalidArgumentError(f"tracking_ids holds {len(ids)} ids; at most {MAX_BATCH_IDS} are allowed")
        for tracking_id in ids:
            _check_id("tracking_ids", tracking_id)
        if len(set(ids)) < len(ids):
            twice = next(tracking_id for tracking_id in ids if ids.count(tracking_id) > 1)
            raise InvalidArgumentError(f"tracking_ids holds {twice!r} more than once")
        found = await self._store.statuses(ids, history=request.include_history)
        response = pb2.BatchGetMessageStatusesResponse()
        for tracking_id in ids:
            state = found.get(tracking_id)
            if state is None:
                response.missing_tracking_ids.append(tracking_id)
            else:
                response.statuses.append(_message_status(state))
        return response

    async def ListMessageStatuses(  # noqa: N802 (the RPC's name)
        self, request: pb2.ListMessageStatusesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb2.ListMessageStatusesResponse:
        """Return one page of a campaign's messages, in tracking id order."""
        return await _abort_on_error(context, self._list(request))

    async def _list(self, request: pb2.ListMessageStatusesRequest) -> pb2.ListMessageStatusesResponse:
        _check_id("campaign_tracking_id", request.campaign_tracking_id)
        if request.page_size < 0:
            raise InvalidArgumentError("page_size must not be negative")
        statuses, channels = _statuses(request.statuses), _channels(request.channels)
        size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE_SIZE)
        after = page_tokens.read(request.page_token, request.campaign_tracking_id, statuses, channels)
        events = await self._store.list_messages(request.campaign_tracking_id, statuses, after, size + 1, channels)
        response = pb2.ListMessageStatusesResponse(
            messages=[_message_status(MessageState(event, [], [])) for event in events[:size]]
        )
        if len(events) > size:
            response.next_page_token = page_tokens.make(
                request.campaign_tracking_id, statuses, events[size - 1].tracking_id, channels
            )
        return response

    async def GetCampaignSummary(  # noqa: N802 (the RPC's name)
        self, request: pb2.GetCampaignSummaryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb2.GetCampaignSummaryResponse:
        """Count a campaign's messages by current status."""
        return await _abort_on_error(context, self._summary(request))

    async def _summary(self, request: pb2.GetCampaignSummaryRequest) -> pb2.GetCampaignSummaryResponse:
        _check_id("campaign_tracking_id", request.campaign_tracking_id)
        summary = await self._store.campaign_summary(request.campaign_tracking_id)
        if summary is None:
            raise NotFoundError(f"no callback received for campaign {request.campaign_tracking_id!r}")
        return pb2.GetCampaignSummaryResponse(
            campaign_tracking_id=request.campaign_tracking_id,
            counts=[
                pb2.StatusCount(status=status, messages=count)  # type: ignore[arg-type]
                for status, count in sorted(summary.counts.items())
            ],
            total_messages=sum(summary.counts.values()),
            first_update_time=timestamp_from_micros(summary.first_update_us),
            latest_update_time=timestamp_from_micros(summary.latest_update_us),
            sequence=summary.sequence,
        )

    async def StreamStatusUpdates(  # noqa: N802 (the RPC's name)
        self, request: pb2.StreamStatusUpdatesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        """Stream status updates: replay or snapshot first when asked, then live."""
        try:
            event_filter = _event_filter(request)
        except RouteeCallbacksError as ex:
            await context.abort(grpc_code(ex), str(ex))
        after = request.after_sequence if request.HasField("after_sequence") else None
        async for item in self._follow(context, event_filter, after, _status_progress, request.include_snapshot):
            yield item

    async def StreamInboundMessages(  # noqa: N802 (the RPC's name)
        self, request: pb2.StreamInboundMessagesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        """Stream inbound messages (replies): replay first when asked, then live."""
        try:
            _check_id("campaign_tracking_id", request.campaign_tracking_id, required=False)
            channels = _channels(request.channels)
        except RouteeCallbacksError as ex:
            await context.abort(grpc_code(ex), str(ex))
        event_filter = EventFilter(request.campaign_tracking_id or None, inbound=True, channels=channels)
        after = request.after_sequence if request.HasField("after_sequence") else None
        async for item in self._follow(context, event_filter, after, _inbound_progress):
            yield item

    async def _follow(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        event_filter: EventFilter,
        after_sequence: int | None,
        progress: Callable[[int], bytes],
        snapshot: bool = False,
    ) -> AsyncIterator[bytes]:
        try:
            with self._streams.admitted(client_identity(context)):
                async for item in self._follower.follow(
                    event_filter,
                    after_sequence,
                    progress,
                    snapshot=snapshot,
                    subscribed=lambda: context.send_initial_metadata(()),
                ):
                    yield item
        except RouteeCallbacksError as ex:
            await context.abort(grpc_code(ex), str(ex))


def _status_progress(sequence: int) -> bytes:
    return pb2.StreamStatusUpdatesResponse(progress=pb2.Progress(sequence=sequence)).SerializeToString()


def _inbound_progress(sequence: int) -> bytes:
    return pb2.StreamInboundMessagesResponse(progress=pb2.Progress(sequence=sequence)).SerializeToString()


def _message_status(state: MessageState) -> pb2.GetMessageStatusResponse:
    current, history, replies = state.current, state.history, state.replies
    response = pb2.GetMessageStatusResponse(
        tracking_id=current.tracking_id,
        campaign_tracking_id=current.campaign_tracking_id,
        status=current.message_status or current.status,  # type: ignore[arg-type]
        status_name=current.status_name,
        sequence=current.sequence,
        events=[status_event(event) for event in history],
        total_events=state.events_total,
        total_replies=state.replies_total,
        channel=current.channel,  # type: ignore[arg-type]
        parts=[sms_part(part) for part in state.parts],
    )
    # Parsed in place: no message to build, then copy.
    (response.sms_callback if current.channel == SMS else response.callback).MergeFromString(current.callback)
    for reply in replies:
        message = response.replies.add()
        message.MergeFromString(reply.message)
        message.channel = reply.channel  # type: ignore[assignment]  # Kept before channels: Viber.
    # A conversation reads in the order its messages were written, whatever order Routee delivered them in.
    response.replies.sort(key=lambda message: (message.send_time.seconds, message.send_time.nanos, message.sequence))
    return response


def client_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Who a call comes from, for per-client limits: the common name of its TLS client certificate when it has one,
    else its address without the port (every connection of one host is one client)."""
    name = next(iter(context.auth_context().get("x509_common_name", ())), None)
    if name is not None:
        return f"certificate {name.decode(errors='replace')}"
    peer = context.peer()  # ipv4:10.0.0.1:5000, ipv6:[::1]:5000, unix:...
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return address.rpartition(":")[0].strip("[]")
    return peer


def _check_id(field: str, value: str, *, required: bool = True) -> None:
    """Refuse an identifier that is empty (when required) or longer than any this service accepts."""
    if not value and required:
        raise InvalidArgumentError(f"{field} is required")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgumentError(f"{field}: an id is at most {MAX_ID_LENGTH} characters, not {len(value)}")


_KNOWN_STATUSES = frozenset(pb.MessageStatus.values()) - {pb.MESSAGE_STATUS_UNSPECIFIED}


def _statuses(requested: Iterable[int]) -> frozenset[int]:
    return _known("statuses", requested, _KNOWN_STATUSES, "MessageStatus")


def _channels(requested: Iterable[int]) -> frozenset[int]:
    return _known("channels", requested, CHANNELS, "Channel")


def _known(field: str, requested: Iterable[int], known: frozenset[int], enum: str) -> frozenset[int]:
    """A filter of enum values; INVALID_ARGUMENT for a value this server does not know (UNSPECIFIED included)."""
    for value in requested:
        if value not in known:
            raise InvalidArgumentError(f"{field}: {value} is not a {enum} this server knows")
    return frozenset(requested)


def _event_filter(request: pb2.StreamStatusUpdatesRequest) -> EventFilter:
    _check_id("campaign_tracking_id", request.campaign_tracking_id, required=False)
    if request.include_snapshot and request.HasField("after_sequence"):
        raise InvalidArgumentError("include_snapshot and after_sequence cannot be combined")
    return EventFilter(
        request.campaign_tracking_id or None, _statuses(request.statuses), channels=_channels(request.channels)
    )


async def _abort_on_error(context: grpc.aio.ServicerContext[Any, Any], work: Awaitable[_T]) -> _T:
    try:
        return await work
    except RouteeCallbacksError as ex:
        await context.abort(grpc_code(ex), str(ex))
        raise  # abort raises; this line only tells type checkers so


def method_handlers(servicer: MessageStatusServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """Build the service's handlers; stream items are pre-serialized bytes, written as they are."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "GetMessageStatus": grpc.unary_unary_rpc_method_handler(
            servicer.GetMessageStatus,
            request_deserializer=pb2.GetMessageStatusRequest.FromString,
            response_serializer=pb2.GetMessageStatusResponse.SerializeToString,
        ),
        **{
            name: grpc.unary_unary_rpc_method_handler(
                getattr(servicer, name),
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )
            for name, request, response in (
                ("BatchGetMessageStatuses", pb2.BatchGetMessageStatusesRequest, pb2.BatchGetMessageStatusesResponse),
                ("ListMessageStatuses", pb2.ListMessageStatusesRequest, pb2.ListMessageStatusesResponse),
                ("GetCampaignSummary", pb2.GetCampaignSummaryRequest, pb2.GetCampaignSummaryResponse),
            )
        },
        "StreamStatusUpdates": grpc.unary_stream_rpc_method_handler(
            servicer.StreamStatusUpdates,
            request_deserializer=pb2.StreamStatusUpdatesRequest.FromString,
            response_serializer=None,  # Items are serialized once, for every subscriber.
        ),
        "StreamInboundMessages": grpc.unary_stream_rpc_method_handler(
            servicer.StreamInboundMessages,
            request_deserializer=pb2.StreamInboundMessagesRequest.FromString,
            response_serializer=None,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
