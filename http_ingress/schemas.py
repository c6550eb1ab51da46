"""The Routee Viber callback as a pydantic model, and its conversion to protobuf.

Strict about structure (a string is a string, a number a number), tolerant where
Routee varies: any field but ``trackingId``, ``status.name`` and
``status.updatedDate`` may be missing or null, unknown fields are ignored here
(the raw body keeps them), status names are free text, dates come with or
without milliseconds and ``ttl`` may be a decimal.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, StringConstraints, ValidationError

from routee.callbacks.v1 import callback_pb2 as pb
from service.convert import status_from_name, timestamp_from_micros, to_micros
from service.errors import InvalidCallbackError, MalformedJsonError


def _as_utc(moment: datetime) -> datetime:
    # Routee documents its dates as UTC; a date without an offset is taken as UTC.
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+02:00 is in year 0 in UTC.
        raise ValueError("date is out of range in UTC") from None


RouteeDatetime = Annotated[datetime, Strict(), AfterValidator(_as_utc)]
Number = Annotated[float, Strict()]
RequiredText = Annotated[str, StringConstraints(strip_whitespace=False, min_length=1, max_length=256)]
Text = str | None


class _RouteeModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False, validate_by_alias=True)


class Reason(_RouteeModel):
    """Why a message has its status (``status.reason``)."""

    detailed_status: Text = Field(None, alias="detailedStatus")
    description: Text = None


class Status(_RouteeModel):
    """The status a callback reports (``status``)."""

    name: RequiredText
    reason: Reason | None = None
    updated_date: RouteeDatetime = Field(alias="updatedDate")


class ViberAction(_RouteeModel):
    """A button in a Viber message (``body.viberAction``)."""

    caption: Text = None
    target_url: Text = Field(None, alias="targetUrl")


class ViberFile(_RouteeModel):
    """A file attached to a Viber message (``body.viberFile``)."""

    file_name: Text = Field(None, alias="fileName")
    file_type: Text = Field(None, alias="fileType")
    file_url: Text = Field(None, alias="fileUrl")


class Body(_RouteeModel):
    """The content of a Viber message (``body``)."""

    text: Text = None
    ios_fallback_text: Text = Field(None, alias="iosFallbackText")
    image_url: Text = Field(None, alias="imageURL")
    viber_action: ViberAction | None = Field(None, alias="viberAction")
    viber_file: ViberFile | None = Field(None, alias="viberFile")


class ViberCallback(_RouteeModel):
    """One Viber status callback as Routee posts it."""

    tracking_id: RequiredText = Field(alias="trackingId")
    campaign_tracking_id: Text = Field(None, alias="campaignTrackingId")
    to: Text = None
    sender: Text = Field(None, alias="from")
    groups: list[str] | None = None
    country: Text = None
    status: Status
    body: Body | None = None
    ttl: Number | None = None
    label: Text = None
    inbound_url: Text = Field(None, alias="inboundUrl")
    application_name: Text = Field(None, alias="applicationName")
    price: Number | None = None
    direction: Text = None
    originating_service: Text = Field(None, alias="originatingService")
    created_at: RouteeDatetime | None = Field(None, alias="createdAt")

    def to_proto(self, raw_json: str) -> pb.ViberCallback:
        """Build the protobuf callback, keeping ``raw_json`` as received."""
        message = pb.ViberCallback(
            tracking_id=self.tracking_id,
            campaign_tracking_id=self.campaign_tracking_id or "",
            recipient=self.to or "",
            sender=self.sender or "",
            groups=self.groups or (),
            country=self.country or "",
            status=pb.CallbackStatus(
                status=status_from_name(self.status.name),  # type: ignore[arg-type]
                name=self.status.name,
                update_time=timestamp_from_micros(to_micros(self.status.updated_date)),
            ),
            label=self.label or "",
            inbound_url=self.inbound_url or "",
            application_name=self.application_name or "",
            direction=self.direction or "",
            originating_service=self.originating_service or "",
            raw_json=raw_json,
        )
        if self.status.reason is not None:
            message.status.reason.detailed_status = self.status.reason.detailed_status or ""
            message.status.reason.description = self.status.reason.description or ""
        if self.body is not None:
            _fill_body(message.body, self.body)
        if self.ttl is not None:
            message.ttl = self.ttl
        if self.price is not None:
            message.price = self.price
        if self.created_at is not None:
            message.create_time.FromMicroseconds(to_micros(self.created_at))
        return message


def _fill_body(target: pb.ViberBody, body: Body) -> None:
    target.text = body.text or ""
    target.ios_fallback_text = body.ios_fallback_text or ""
    target.image_url = body.image_url or ""
    if body.viber_action is not None:
        target.viber_action.caption = body.viber_action.caption or ""
        target.viber_action.target_url = body.viber_action.target_url or ""
    if body.viber_file is not None:
        target.viber_file.file_name = body.viber_file.file_name or ""
        target.viber_file.file_type = body.viber_file.file_type or ""
        target.viber_file.file_url = body.viber_file.file_url or ""


def parse_callback(body: bytes) -> pb.ViberCallback:
    """Validate a raw request body and convert it to protobuf.

    Raises MalformedJsonError when the body is not JSON (or not UTF-8) and
    InvalidCallbackError, naming the first offending field, when it is JSON but
    not a Viber callback.
    """
    try:
        model = ViberCallback.model_validate_json(body)
    except ValidationError as ex:
        errors = ex.errors(include_url=False, include_input=False)
        first = errors[0]
        if first["type"] == "json_invalid":
            raise MalformedJsonError(
                f"the body is not valid JSON: {first['msg'].removeprefix('Invalid JSON: ')}"
            ) from None
        field = ".".join(str(part) for part in first["loc"])
        raise InvalidCallbackError(field, first["msg"]) from None
    return model.to_proto(body.decode("utf-8"))
