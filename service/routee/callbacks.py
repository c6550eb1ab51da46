"""What Routee posts — the Viber status callback and the inbound message (a reply) — as pydantic schemas, and
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

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, NotRequired, Required

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
)
from pydantic_core import core_schema
from typing_extensions import TypedDict  # pydantic validates typing.TypedDict only from Python 3.12

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.errors import InvalidCallbackError, MalformedJsonError
from service.domain.limits import MAX_ID_LENGTH
from service.routee.parsed import Adjustment, ParsedCallback, ParsedInbound
from service.routee.statuses import status_from_name


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


# No NUL: an identifier with one is no identifier Routee sends (and PostgreSQL text cannot hold one).
RequiredText = Annotated[
    str,
    Strict(),
    StringConstraints(strip_whitespace=False, min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[^\x00]*$"),
]


# -- tolerance -------------------------------------------------------------------------------------------------

#: The JSON path of every secondary field, as adjustments name it (metrics export each from the start).
TOLERATED_FIELDS: list[str] = []


@dataclass(frozen=True)
class _Tolerant:
    """A secondary field: a valid value is kept; any other is coerced (``coerce`` gives None when it cannot) and
    the adjustment noted. Its JSON Schema accepts any value, since the service does."""

    path: str
    coerce: Callable[[Any], Any]

    def __post_init__(self) -> None:
        TOLERATED_FIELDS.append(self.path)

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


# -- the schemas ------------------------------------------------------------------------------------------------
#
# Each schema is a TypedDict whose keys are the protobuf message's field names, read from Routee's names
# (aliases): what pydantic validates is the keyword arguments of the protobuf message itself, with no model
# object in between (measured: a third of parsing). A missing or null field is unset in the protobuf.

_CONFIG = ConfigDict(extra="ignore", allow_inf_nan=False)


class TimestampFields(TypedDict):
    """The fields of a protobuf Timestamp."""

    seconds: int
    nanos: int


#: The epoch's proleptic Gregorian ordinal (datetime.toordinal).
_EPOCH_ORDINAL = datetime(1970, 1, 1).toordinal()
#: What a protobuf Timestamp can hold, 0001-01-01 to 9999-12-31 in UTC, in microseconds since the epoch.
_FIRST_US, _LAST_US = -62_135_596_800_000_000, 253_402_300_799_999_999


def _timestamp(moment: datetime) -> TimestampFields:
    # Routee documents its dates as UTC; a date without an offset is taken as UTC. (From the fields, not by
    # subtracting an epoch or astimezone: twice as fast, and it runs twice per callback. 0001-01-01T00:00+02:00,
    # in year 0 in UTC, cannot overflow it.)
    seconds = (moment.toordinal() - _EPOCH_ORDINAL) * 86_400 + moment.hour * 3600 + moment.minute * 60 + moment.second
    micros = seconds * 1_000_000 + moment.microsecond
    if (offset := moment.utcoffset()) is not None:
        micros -= (offset.days * 86_400 + offset.seconds) * 1_000_000 + offset.microseconds
    if not _FIRST_US <= micros <= _LAST_US:
        raise ValueError("date is out of range in UTC")
    return {"seconds": micros // 1_000_000, "nanos": micros % 1_000_000 * 1000}


@dataclass(frozen=True)
class _AsTimestamp:
    """Validated as a date (``strict``: RFC 3339 text only), kept as the fields of a protobuf Timestamp. A date
    without an offset is UTC; one out of range in UTC is refused."""

    strict: bool = True

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(_timestamp, core_schema.datetime_schema(strict=self.strict))


#: A secondary text field (with a _Tolerant of its own).
_Text = Annotated[str | None, Strict()]
RouteeTimestamp = Annotated[TimestampFields, _AsTimestamp()]


class Reason(TypedDict, total=False):
    """Why a message has its status (``status.reason``)."""

    __pydantic_config__ = _CONFIG  # type: ignore[misc]
    detailed_status: Annotated[
        _Text, _Tolerant("status.reason.detailedStatus", _to_text), Field(alias="detailedStatus")
    ]
    description: Annotated[_Text, _Tolerant("status.reason.description", _to_text)]


class Status(TypedDict):
    """The status a callback reports (``status``)."""

    __pydantic_config__ = _CONFIG  # type: ignore[misc]
    name: RequiredText
    reason: NotRequired[Annotated[Reason | None, _Tolerant("status.reason", _to_reason)]]
    update_time: Annotated[RouteeTimestamp, Field(alias="updatedDate")]


def _with_status(status: dict[str, Any]) -> dict[str, Any]:
    """The status's MessageStatus beside its name."""
    status["status"] = status_from_name(status["name"])
    return status


class ViberAction(TypedDict, total=False):
    """A button in a Viber message (``body.viberAction``)."""

    __pydantic_config__ = _CONFIG  # type: ignore[misc]
    caption: Annotated[_Text, _Tolerant("body.viberAction.caption", _to_text)]
    target_url: Annotated[_Text, _Tolerant("body.viberAction.targetUrl", _to_text), Field(alias="targetUrl")]


class ViberFile(TypedDict, total=False):
    """A file attached to a Viber message (``body.viberFile``)."""

    __pydantic_config__ = _CONFIG  # type: ignore[misc]
    file_name: Annotated[_Text, _Tolerant("body.viberFile.fileName", _to_text), Field(alias="fileName")]
    file_type: Annotated[_Text, _Tolerant("body.viberFile.fileType", _to_text), Field(alias="fileType")]
    file_url: Annotated[_Text, _Tolerant("body.viberFile.fileUrl", _to_text), Field(alias="fileUrl")]


class Body(TypedDict, total=False):
    """The content of a Viber message (``body``)."""

    __pydantic_config__ = _CONFIG  # type: ignore[misc]
    text: Annotated[_Text, _Tolerant("body.text", _to_text)]
    ios_fallback_text: Annotated[_Text, _Tolerant("body.iosFallbackText", _to_text), Field(alias="iosFallbackText")]
    image_url: Annotated[_Text, _Tolerant("body.imageURL", _to_text), Field(alias="imageURL")]
    viber_action: Annotated[ViberAction | None, _Tolerant("body.viberAction", _unset), Field(alias="viberAction")]
    viber_file: Annotated[ViberFile | None, _Tolerant("body.viberFile", _unset), Field(alias="viberFile")]


class ViberCallback(TypedDict, total=False):
    """One Viber status callback as Routee posts it."""

    __pydantic_config__ = _CONFIG  # type: ignore[misc]
    tracking_id: Required[Annotated[RequiredText, Field(alias="trackingId")]]
    campaign_tracking_id: Annotated[
        _Text, AfterValidator(_no_nul), _Tolerant("campaignTrackingId", _to_campaign), Field(alias="campaignTrackingId")
    ]
    recipient: Annotated[_Text, _Tolerant("to", _to_text), Field(alias="to")]
    sender: Annotated[_Text, _Tolerant("from", _to_text), Field(alias="from")]
    groups: Annotated[list[str] | None, Strict(), _Tolerant("groups", _to_strings)]
    country: Annotated[_Text, _Tolerant("country", _to_text)]
    status: Required[Annotated[Status, AfterValidator(_with_status)]]
    body: Annotated[Body | None, _Tolerant("body", _unset)]
    ttl: Annotated[float | None, Strict(), _Tolerant("ttl", _to_number)]
    label: Annotated[_Text, _Tolerant("label", _to_text)]
    inbound_url: Annotated[_Text, _Tolerant("inboundUrl", _to_text), Field(alias="inboundUrl")]
    application_name: Annotated[_Text, _Tolerant("applicationName", _to_text), Field(alias="applicationName")]
    price: Annotated[float | None, Strict(), _Tolerant("price", _to_number)]
    direction: Annotated[_Text, _Tolerant("direction", _to_text)]
    originating_service: Annotated[_Text, _Tolerant("originatingService", _to_text), Field(alias="originatingService")]
    create_time: Annotated[
        TimestampFields | None,
        _AsTimestamp(strict=False),
        BeforeValidator(_text_only),
        _Tolerant("createdAt", _unset),
        Field(alias="createdAt"),
    ]


_CALLBACK: TypeAdapter[ViberCallback] = TypeAdapter(ViberCallback)


def parse_callback(body: bytes) -> ParsedCallback:
    """Validate a raw request body and convert it to protobuf, tolerating what can be tolerated.

    Raises MalformedJsonError when the body is not JSON (or not UTF-8) and InvalidCallbackError, naming the
    field, when ``trackingId``, ``status.name`` or ``status.updatedDate`` is missing or unusable (or the body is
    not a JSON object).
    """
    adjusted: list[Adjustment] = []
    fields = _validate(_CALLBACK, body, adjusted, _CALLBACK_IDENTITY)
    return ParsedCallback(pb.ViberCallback(**fields, raw_json=body.decode("utf-8")), adjusted)


#: The fields that identify a body: the only ones whose text may refuse it.
_CALLBACK_IDENTITY = frozenset({"trackingId", "status.name", "status.updatedDate"})
_INBOUND_IDENTITY = frozenset({"from", "sentDate"})
_UTF8_BOM = b"\xef\xbb\xbf"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _validate(
    adapter: TypeAdapter[Any], body: bytes, adjusted: list[Adjustment], identity: frozenset[str]
) -> dict[str, Any]:
    """The body's fields as the keyword arguments of its protobuf message.

    JSON that the strict parser refuses only for a UTF-8 byte-order mark or a lone surrogate escape (``"\\ud83d"``,
    valid JSON text but no character) is repaired and validated again: the mark dropped, each lone surrogate
    replaced by U+FFFD, unless it is in an identity field (then the body is refused, naming it). ``raw_json``
    keeps the body as it came either way.
    """
    try:
        return _validated(adapter, body, adjusted)
    except MalformedJsonError:
        repaired = _repaired(body, identity)
        if repaired is None:
            raise
        return _validated(adapter, repaired, adjusted)


def _validated(adapter: TypeAdapter[Any], body: bytes, adjusted: list[Adjustment]) -> dict[str, Any]:
    try:
        fields: dict[str, Any] = adapter.validate_json(body, context={"adjusted": adjusted})
        return fields
    except ValidationError as ex:
        errors = ex.errors(include_url=False, include_input=False)
        first = errors[0]
        if first["type"] == "json_invalid":
            raise MalformedJsonError(
                f"the body is not valid JSON: {first['msg'].removeprefix('Invalid JSON: ')}"
            ) from None
        field_path = ".".join(str(part) for part in first["loc"])
        raise InvalidCallbackError(field_path, first["msg"]) from None


def _repaired(body: bytes, identity: frozenset[str]) -> bytes | None:
    """The body without a byte-order mark and with lone surrogates replaced; None when that does not make it JSON."""
    try:  # UTF-8 only, as the strict parser: json.loads would take UTF-16 and UTF-32 too.
        document = json.loads(body.removeprefix(_UTF8_BOM).decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError.
        return None
    return json.dumps(_without_surrogates(document, "", identity), ensure_ascii=False).encode()


def _without_surrogates(value: Any, path: str, identity: frozenset[str]) -> Any:
    if isinstance(value, str):
        if _LONE_SURROGATE.search(value) is None:
            return value
        if path in identity:
            raise InvalidCallbackError(path, "holds a lone surrogate escape, which is no character")
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {
            _LONE_SURROGATE.sub("\ufffd", key): _without_surrogates(item, f"{path}.{key}" if path else key, identity)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_without_surrogates(item, path, identity) for item in value]
    return value


# -- inbound messages ------------------------------------------------------------------------------------------


def _number_as_text(value: Any) -> Any:
    """A phone number sent as a JSON number is still the number."""
    return _to_text(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class InboundMessage(TypedDict, total=False):
    """One inbound Viber message (a reply) as Routee posts it to a campaign's ``inboundUrl``."""

    __pydantic_config__ = _CONFIG  # type: ignore[misc]
    sender: Required[
        Annotated[
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
            Field(alias="from"),
        ]
    ]
    send_time: Required[Annotated[RouteeTimestamp, Field(alias="sentDate")]]
    recipient: Annotated[_Text, _Tolerant("inbound.to", _to_text), Field(alias="to")]
    text: Annotated[_Text, _Tolerant("inbound.message", _to_text), Field(alias="message")]
    campaign_name: Annotated[_Text, _Tolerant("inbound.campaignName", _to_text), Field(alias="campaignName")]
    campaign_tracking_id: Annotated[
        _Text,
        AfterValidator(_no_nul),
        _Tolerant("inbound.campaignTrackingId", _to_campaign),
        Field(alias="campaignTrackingId"),
    ]
    reference_tracking_id: Annotated[
        _Text,
        AfterValidator(_no_nul),
        _Tolerant("inbound.referenceTrackingId", _to_campaign),
        Field(alias="referenceTrackingId"),
    ]
    direction: Annotated[_Text, _Tolerant("inbound.direction", _to_text)]
    media_url: Annotated[_Text, _Tolerant("inbound.media", _to_text), Field(alias="media")]
    # Routee's example spells it `filename`, its field table `fileName`: both are taken (`filename` first).
    filename: Annotated[_Text, _Tolerant("inbound.filename", _to_text)]
    file_name: Annotated[_Text, _Tolerant("inbound.fileName", _to_text), Field(alias="fileName")]
    label: Annotated[_Text, _Tolerant("inbound.label", _to_text)]


def _one_file_name(message: dict[str, Any]) -> dict[str, Any]:
    if (filename := message.pop("filename", None)) is not None:
        message["file_name"] = filename
    return message


_INBOUND: TypeAdapter[InboundMessage] = TypeAdapter(Annotated[InboundMessage, AfterValidator(_one_file_name)])


def parse_inbound(body: bytes) -> ParsedInbound:
    """Validate a raw inbound message body and convert it to protobuf, tolerating what can be tolerated.

    Raises MalformedJsonError when the body is not JSON (or not UTF-8) and InvalidCallbackError, naming the
    field, when ``from`` or ``sentDate`` is missing or unusable (or the body is not a JSON object).
    """
    adjusted: list[Adjustment] = []
    fields = _validate(_INBOUND, body, adjusted, _INBOUND_IDENTITY)
    return ParsedInbound(pb.InboundMessage(**fields, raw_json=body.decode("utf-8")), adjusted)
