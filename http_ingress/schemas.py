"""What Routee posts — the Viber status callback and the inbound message (a reply) — as pydantic models, and
their conversion to protobuf.

Only three fields decide whether a callback can be kept: ``trackingId``,
``status.name`` and ``status.updatedDate`` identify and order it (422 when
they are missing or unusable). Every other field is tolerant, because a 4xx
to Routee is a status lost for good: a valid value is kept; a value of an
unexpected type is coerced where that is unambiguous (``"3600"`` → 3600,
``"vip"`` → ``["vip"]``, a ``reason`` given as text → its ``detailedStatus``);
anything else is left unset in the protobuf. The raw body is always kept
whole (``raw_json``), so nothing is lost; ``ParsedCallback.adjusted`` says what
was coerced or dropped, by field.

An inbound message is kept on the same terms: ``from`` and ``sentDate`` are
required (who sent it, and when: with the text they recognise a retry), every
other field is tolerant.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Strict,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
)
from pydantic_core import core_schema

from routee.callbacks.v1 import callback_pb2 as pb
from service.convert import status_from_name, timestamp_from_micros, to_micros
from service.errors import InvalidCallbackError, MalformedJsonError
from service.ingest import Adjustment, ParsedCallback, ParsedInbound


def _as_utc(moment: datetime) -> datetime:
    # Routee documents its dates as UTC; a date without an offset is taken as UTC.
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+02:00 is in year 0 in UTC.
        raise ValueError("date is out of range in UTC") from None


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


RouteeDatetime = Annotated[datetime, Strict(), AfterValidator(_as_utc)]
# No NUL: an identifier with one is no identifier Routee sends (and PostgreSQL text cannot hold one).
RequiredText = Annotated[
    str, Strict(), StringConstraints(strip_whitespace=False, min_length=1, max_length=256, pattern=r"^[^\x00]*$")
]


# -- tolerance -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tolerant:
    """A secondary field: a valid value is kept; any other is coerced (``coerce`` gives None when it cannot) and
    the adjustment noted. Its JSON Schema accepts any value, since the service does."""

    path: str
    coerce: Callable[[Any], Any]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        expected = handler(source)
        # A valid value passes the first choice without a call into Python (most values of most callbacks: it
        # is a tenth of the ingress's time, measured); only another one reaches ``_validate``. null is kept as
        # it is, before any validator of the field sees it (as ``_validate`` does).
        return core_schema.union_schema(
            [
                core_schema.nullable_schema(expected),
                core_schema.with_info_wrap_validator_function(self._validate, expected),
            ],
            mode="left_to_right",
        )

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> Any:
        expected = handler(schema)
        kind = expected.get("anyOf", [expected])[0].get("type", expected.get("title", "value"))
        return {
            "description": f"Expected: {kind}. A value of another type is coerced where that is unambiguous,"
            " otherwise ignored (raw_json keeps it): it never refuses the callback."
        }

    def _validate(self, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        if value is None:
            return None
        try:
            return handler(value)
        except ValidationError:
            pass
        coerced = self.coerce(value)
        if coerced is not None:
            try:
                coerced = handler(coerced)  # What it coerced to is validated like any value (a dict → a model).
            except ValidationError:
                coerced = None
        adjusted = info.context.get("adjusted") if isinstance(info.context, dict) else None
        if adjusted is not None:
            adjusted.append((self.path, "dropped" if coerced is None else "coerced"))
        return coerced


def _to_text(value: Any) -> str | None:
    """Numbers are unambiguous as text; booleans, lists and objects are not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return str(value) if isinstance(value, int) or math.isfinite(value) else None


def _to_campaign(value: Any) -> str | None:
    text = _to_text(value) if not isinstance(value, str) else value
    return None if text is None or "\x00" in text else text


_DECIMAL = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")


def _to_number(value: Any) -> float | None:
    """A decimal number written as a string."""
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def _to_strings(value: Any) -> list[str] | None:
    """One group given as a string is a list of one; numbers in a list are their text."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        texts = [item if isinstance(item, str) else _to_text(item) for item in value]
        return [text for text in texts if text is not None]
    return None


def _to_reason(value: Any) -> dict[str, str] | None:
    """A reason given as text is its detailed status (``"Not Viber User"``)."""
    return {"detailedStatus": value} if isinstance(value, str) else None


def _unset(value: Any) -> None:
    return None


def _text_only(value: Any) -> Any:
    # A number as a date would be a guess (seconds or milliseconds since when?).
    if not isinstance(value, str):
        raise ValueError("a date must be text")
    return value


# -- the model --------------------------------------------------------------------------------------------------


class _RouteeModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False, validate_by_alias=True)


class Reason(_RouteeModel):
    """Why a message has its status (``status.reason``)."""

    detailed_status: Annotated[str | None, Strict(), _Tolerant("status.reason.detailedStatus", _to_text)] = Field(
        None, alias="detailedStatus"
    )
    description: Annotated[str | None, Strict(), _Tolerant("status.reason.description", _to_text)] = None


class Status(_RouteeModel):
    """The status a callback reports (``status``)."""

    name: RequiredText
    reason: Annotated[Reason | None, _Tolerant("status.reason", _to_reason)] = None
    updated_date: RouteeDatetime = Field(alias="updatedDate")


class ViberAction(_RouteeModel):
    """A button in a Viber message (``body.viberAction``)."""

    caption: Annotated[str | None, Strict(), _Tolerant("body.viberAction.caption", _to_text)] = None
    target_url: Annotated[str | None, Strict(), _Tolerant("body.viberAction.targetUrl", _to_text)] = Field(
        None, alias="targetUrl"
    )


class ViberFile(_RouteeModel):
    """A file attached to a Viber message (``body.viberFile``)."""

    file_name: Annotated[str | None, Strict(), _Tolerant("body.viberFile.fileName", _to_text)] = Field(
        None, alias="fileName"
    )
    file_type: Annotated[str | None, Strict(), _Tolerant("body.viberFile.fileType", _to_text)] = Field(
        None, alias="fileType"
    )
    file_url: Annotated[str | None, Strict(), _Tolerant("body.viberFile.fileUrl", _to_text)] = Field(
        None, alias="fileUrl"
    )


class Body(_RouteeModel):
    """The content of a Viber message (``body``)."""

    text: Annotated[str | None, Strict(), _Tolerant("body.text", _to_text)] = None
    ios_fallback_text: Annotated[str | None, Strict(), _Tolerant("body.iosFallbackText", _to_text)] = Field(
        None, alias="iosFallbackText"
    )
    image_url: Annotated[str | None, Strict(), _Tolerant("body.imageURL", _to_text)] = Field(None, alias="imageURL")
    viber_action: Annotated[ViberAction | None, _Tolerant("body.viberAction", _unset)] = Field(
        None, alias="viberAction"
    )
    viber_file: Annotated[ViberFile | None, _Tolerant("body.viberFile", _unset)] = Field(None, alias="viberFile")


class ViberCallback(_RouteeModel):
    """One Viber status callback as Routee posts it."""

    tracking_id: RequiredText = Field(alias="trackingId")
    campaign_tracking_id: Annotated[
        str | None, Strict(), AfterValidator(_no_nul), _Tolerant("campaignTrackingId", _to_campaign)
    ] = Field(None, alias="campaignTrackingId")
    to: Annotated[str | None, Strict(), _Tolerant("to", _to_text)] = None
    sender: Annotated[str | None, Strict(), _Tolerant("from", _to_text)] = Field(None, alias="from")
    groups: Annotated[list[str] | None, Strict(), _Tolerant("groups", _to_strings)] = None
    country: Annotated[str | None, Strict(), _Tolerant("country", _to_text)] = None
    status: Status
    body: Annotated[Body | None, _Tolerant("body", _unset)] = None
    ttl: Annotated[float | None, Strict(), _Tolerant("ttl", _to_number)] = None
    label: Annotated[str | None, Strict(), _Tolerant("label", _to_text)] = None
    inbound_url: Annotated[str | None, Strict(), _Tolerant("inboundUrl", _to_text)] = Field(None, alias="inboundUrl")
    application_name: Annotated[str | None, Strict(), _Tolerant("applicationName", _to_text)] = Field(
        None, alias="applicationName"
    )
    price: Annotated[float | None, Strict(), _Tolerant("price", _to_number)] = None
    direction: Annotated[str | None, Strict(), _Tolerant("direction", _to_text)] = None
    originating_service: Annotated[str | None, Strict(), _Tolerant("originatingService", _to_text)] = Field(
        None, alias="originatingService"
    )
    created_at: Annotated[
        datetime | None, AfterValidator(_as_utc), BeforeValidator(_text_only), _Tolerant("createdAt", _unset)
    ] = Field(None, alias="createdAt")

    def to_proto(self, raw_json: str) -> pb.ViberCallback:
        """Build the protobuf callback, keeping ``raw_json`` as received (built from one dict: it is hot)."""
        status: dict[str, Any] = {
            "status": status_from_name(self.status.name),
            "name": self.status.name,
            "update_time": _timestamp(self.status.updated_date),
        }
        if self.status.reason is not None:
            status["reason"] = {
                "detailed_status": self.status.reason.detailed_status or "",
                "description": self.status.reason.description or "",
            }
        fields: dict[str, Any] = {
            "tracking_id": self.tracking_id,
            "campaign_tracking_id": self.campaign_tracking_id or "",
            "recipient": self.to or "",
            "sender": self.sender or "",
            "groups": self.groups or (),
            "country": self.country or "",
            "status": status,
            "label": self.label or "",
            "inbound_url": self.inbound_url or "",
            "application_name": self.application_name or "",
            "direction": self.direction or "",
            "originating_service": self.originating_service or "",
            "raw_json": raw_json,
            "ttl": self.ttl,
            "price": self.price,
        }
        if self.body is not None:
            fields["body"] = _body(self.body)
        if self.created_at is not None:
            fields["create_time"] = _timestamp(self.created_at)
        return pb.ViberCallback(**fields)


def _timestamp(moment: datetime) -> dict[str, int]:
    micros = to_micros(moment)
    return {"seconds": micros // 1_000_000, "nanos": micros % 1_000_000 * 1000}


def _body(body: Body) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "text": body.text or "",
        "ios_fallback_text": body.ios_fallback_text or "",
        "image_url": body.image_url or "",
    }
    if body.viber_action is not None:
        fields["viber_action"] = {
            "caption": body.viber_action.caption or "",
            "target_url": body.viber_action.target_url or "",
        }
    if body.viber_file is not None:
        fields["viber_file"] = {
            "file_name": body.viber_file.file_name or "",
            "file_type": body.viber_file.file_type or "",
            "file_url": body.viber_file.file_url or "",
        }
    return fields


def parse_callback(body: bytes) -> ParsedCallback:
    """Validate a raw request body and convert it to protobuf, tolerating what can be tolerated.

    Raises MalformedJsonError when the body is not JSON (or not UTF-8) and InvalidCallbackError, naming the
    field, when ``trackingId``, ``status.name`` or ``status.updatedDate`` is missing or unusable (or the body is
    not a JSON object).
    """
    adjusted: list[Adjustment] = []
    model = _validate(ViberCallback, body, adjusted)
    return ParsedCallback(model.to_proto(body.decode("utf-8")), adjusted)


_Model = TypeVar("_Model", bound=BaseModel)


def _validate(model: type[_Model], body: bytes, adjusted: list[Adjustment]) -> _Model:
    try:
        return model.model_validate_json(body, context={"adjusted": adjusted})
    except ValidationError as ex:
        errors = ex.errors(include_url=False, include_input=False)
        first = errors[0]
        if first["type"] == "json_invalid":
            raise MalformedJsonError(
                f"the body is not valid JSON: {first['msg'].removeprefix('Invalid JSON: ')}"
            ) from None
        field_path = ".".join(str(part) for part in first["loc"])
        raise InvalidCallbackError(field_path, first["msg"]) from None


# -- inbound messages ------------------------------------------------------------------------------------------


def _number_as_text(value: Any) -> Any:
    """A phone number sent as a JSON number is still the number."""
    return _to_text(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class InboundMessage(_RouteeModel):
    """One inbound Viber message (a reply) as Routee posts it to a campaign's ``inboundUrl``."""

    sender: Annotated[
        RequiredText,
        BeforeValidator(_number_as_text),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[^\\x00]*$"},
                    {"type": "number"},
                ],
                "description": "The user's number; a JSON number is taken as its digits.",
            }
        ),
    ] = Field(alias="from")
    sent_date: RouteeDatetime = Field(alias="sentDate")
    to: Annotated[str | None, Strict(), _Tolerant("inbound.to", _to_text)] = None
    message: Annotated[str | None, Strict(), _Tolerant("inbound.message", _to_text)] = None
    campaign_name: Annotated[str | None, Strict(), _Tolerant("inbound.campaignName", _to_text)] = Field(
        None, alias="campaignName"
    )
    campaign_tracking_id: Annotated[
        str | None, Strict(), AfterValidator(_no_nul), _Tolerant("inbound.campaignTrackingId", _to_campaign)
    ] = Field(None, alias="campaignTrackingId")
    reference_tracking_id: Annotated[
        str | None, Strict(), AfterValidator(_no_nul), _Tolerant("inbound.referenceTrackingId", _to_campaign)
    ] = Field(None, alias="referenceTrackingId")
    direction: Annotated[str | None, Strict(), _Tolerant("inbound.direction", _to_text)] = None
    media: Annotated[str | None, Strict(), _Tolerant("inbound.media", _to_text)] = None
    # Routee's example spells it `filename`, its field table `fileName`: both are taken.
    filename: Annotated[str | None, Strict(), _Tolerant("inbound.filename", _to_text)] = None
    file_name: Annotated[str | None, Strict(), _Tolerant("inbound.fileName", _to_text)] = Field(None, alias="fileName")
    label: Annotated[str | None, Strict(), _Tolerant("inbound.label", _to_text)] = None

    def to_proto(self, raw_json: str) -> pb.InboundMessage:
        """Build the protobuf message (no sequence or receive time yet: the store sets them)."""
        return pb.InboundMessage(
            sender=self.sender,
            recipient=self.to or "",
            text=self.message or "",
            send_time=timestamp_from_micros(to_micros(self.sent_date)),
            campaign_name=self.campaign_name or "",
            campaign_tracking_id=self.campaign_tracking_id or "",
            reference_tracking_id=self.reference_tracking_id or "",
            media_url=self.media or "",
            file_name=self.filename or self.file_name or "",
            label=self.label or "",
            direction=self.direction or "",
            raw_json=raw_json,
        )


def parse_inbound(body: bytes) -> ParsedInbound:
    """Validate a raw inbound message body and convert it to protobuf, tolerating what can be tolerated.

    Raises MalformedJsonError when the body is not JSON (or not UTF-8) and InvalidCallbackError, naming the
    field, when ``from`` or ``sentDate`` is missing or unusable (or the body is not a JSON object).
    """
    adjusted: list[Adjustment] = []
    model = _validate(InboundMessage, body, adjusted)
    return ParsedInbound(model.to_proto(body.decode("utf-8")), adjusted)
