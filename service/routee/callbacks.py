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
import re
from typing import Annotated, Any, NotRequired, Required

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from typing_extensions import TypedDict  # pydantic validates typing.TypedDict only from Python 3.12

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.errors import InvalidCallbackError, MalformedJsonError
from service.domain.rules import VIBER
from service.routee.fields import (
    CONFIG,
    AsTimestamp,
    RequiredText,
    RouteeTimestamp,
    Text,
    TimestampFields,
    Tolerant,
    no_nul,
    text_only,
    to_campaign,
    to_number,
    to_reason,
    to_strings,
    to_text,
    unset,
)
from service.routee.parsed import Adjustment, ParsedCallback, ParsedInbound
from service.routee.statuses import status_from_name

# -- the schemas ------------------------------------------------------------------------------------------------
#
# Each schema is a TypedDict whose keys are the protobuf message's field names, read from Routee's names
# (aliases): what pydantic validates is the keyword arguments of the protobuf message itself, with no model
# object in between (measured: a third of parsing). A missing or null field is unset in the protobuf.


class Reason(TypedDict, total=False):
    """Why a message has its status (``status.reason``)."""

    __pydantic_config__ = CONFIG  # type: ignore[misc]
    detailed_status: Annotated[Text, Tolerant("status.reason.detailedStatus", to_text), Field(alias="detailedStatus")]
    description: Annotated[Text, Tolerant("status.reason.description", to_text)]


class Status(TypedDict):
    """The status a callback reports (``status``)."""

    __pydantic_config__ = CONFIG  # type: ignore[misc]
    name: RequiredText
    reason: NotRequired[Annotated[Reason | None, Tolerant("status.reason", to_reason)]]
    update_time: Annotated[RouteeTimestamp, Field(alias="updatedDate")]


def with_status(status: dict[str, Any]) -> dict[str, Any]:
    """The status's MessageStatus beside its name."""
    status["status"] = status_from_name(status["name"])
    return status


class ViberAction(TypedDict, total=False):
    """A button in a Viber message (``body.viberAction``)."""

    __pydantic_config__ = CONFIG  # type: ignore[misc]
    caption: Annotated[Text, Tolerant("body.viberAction.caption", to_text)]
    target_url: Annotated[Text, Tolerant("body.viberAction.targetUrl", to_text), Field(alias="targetUrl")]


class ViberFile(TypedDict, total=False):
    """A file attached to a Viber message (``body.viberFile``)."""

    __pydantic_config__ = CONFIG  # type: ignore[misc]
    file_name: Annotated[Text, Tolerant("body.viberFile.fileName", to_text), Field(alias="fileName")]
    file_type: Annotated[Text, Tolerant("body.viberFile.fileType", to_text), Field(alias="fileType")]
    file_url: Annotated[Text, Tolerant("body.viberFile.fileUrl", to_text), Field(alias="fileUrl")]


class Body(TypedDict, total=False):
    """The content of a Viber message (``body``)."""

    __pydantic_config__ = CONFIG  # type: ignore[misc]
    text: Annotated[Text, Tolerant("body.text", to_text)]
    ios_fallback_text: Annotated[Text, Tolerant("body.iosFallbackText", to_text), Field(alias="iosFallbackText")]
    image_url: Annotated[Text, Tolerant("body.imageURL", to_text), Field(alias="imageURL")]
    viber_action: Annotated[ViberAction | None, Tolerant("body.viberAction", unset), Field(alias="viberAction")]
    viber_file: Annotated[ViberFile | None, Tolerant("body.viberFile", unset), Field(alias="viberFile")]


class ViberCallback(TypedDict, total=False):
    """One Viber status callback as Routee posts it."""

    __pydantic_config__ = CONFIG  # type: ignore[misc]
    tracking_id: Required[Annotated[RequiredText, Field(alias="trackingId")]]
    campaign_tracking_id: Annotated[
        Text, AfterValidator(no_nul), Tolerant("campaignTrackingId", to_campaign), Field(alias="campaignTrackingId")
    ]
    recipient: Annotated[Text, Tolerant("to", to_text), Field(alias="to")]
    sender: Annotated[Text, Tolerant("from", to_text), Field(alias="from")]
    groups: Annotated[list[str] | None, Strict(), Tolerant("groups", to_strings)]
    country: Annotated[Text, Tolerant("country", to_text)]
    status: Required[Annotated[Status, AfterValidator(with_status)]]
    body: Annotated[Body | None, Tolerant("body", unset)]
    ttl: Annotated[float | None, Strict(), Tolerant("ttl", to_number)]
    label: Annotated[Text, Tolerant("label", to_text)]
    inbound_url: Annotated[Text, Tolerant("inboundUrl", to_text), Field(alias="inboundUrl")]
    application_name: Annotated[Text, Tolerant("applicationName", to_text), Field(alias="applicationName")]
    price: Annotated[float | None, Strict(), Tolerant("price", to_number)]
    direction: Annotated[Text, Tolerant("direction", to_text)]
    originating_service: Annotated[Text, Tolerant("originatingService", to_text), Field(alias="originatingService")]
    create_time: Annotated[
        TimestampFields | None,
        AsTimestamp(strict=False),
        BeforeValidator(text_only),
        Tolerant("createdAt", unset),
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
    fields = validate_body(_CALLBACK, body, adjusted, _CALLBACK_IDENTITY)
    return ParsedCallback(pb.ViberCallback(**fields, raw_json=body.decode("utf-8")), adjusted)


#: The fields that identify a body: the only ones whose text may refuse it.
_CALLBACK_IDENTITY = frozenset({"trackingId", "status.name", "status.updatedDate"})
_INBOUND_IDENTITY = frozenset({"from", "sentDate"})
_UTF8_BOM = b"\xef\xbb\xbf"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def validate_body(
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
    return to_text(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


#: Who sent an inbound message: required, and a JSON number is taken as its digits.
UserNumber = Annotated[
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
]


class InboundMessage(TypedDict, total=False):
    """One inbound Viber message (a reply) as Routee posts it to a campaign's ``inboundUrl``."""

    __pydantic_config__ = CONFIG  # type: ignore[misc]
    sender: Required[Annotated[UserNumber, Field(alias="from")]]
    send_time: Required[Annotated[RouteeTimestamp, Field(alias="sentDate")]]
    recipient: Annotated[Text, Tolerant("inbound.to", to_text), Field(alias="to")]
    text: Annotated[Text, Tolerant("inbound.message", to_text), Field(alias="message")]
    campaign_name: Annotated[Text, Tolerant("inbound.campaignName", to_text), Field(alias="campaignName")]
    campaign_tracking_id: Annotated[
        Text,
        AfterValidator(no_nul),
        Tolerant("inbound.campaignTrackingId", to_campaign),
        Field(alias="campaignTrackingId"),
    ]
    reference_tracking_id: Annotated[
        Text,
        AfterValidator(no_nul),
        Tolerant("inbound.referenceTrackingId", to_campaign),
        Field(alias="referenceTrackingId"),
    ]
    direction: Annotated[Text, Tolerant("inbound.direction", to_text)]
    media_url: Annotated[Text, Tolerant("inbound.media", to_text), Field(alias="media")]
    # Routee's example spells it `filename`, its field table `fileName`: both are taken (`filename` first).
    filename: Annotated[Text, Tolerant("inbound.filename", to_text)]
    file_name: Annotated[Text, Tolerant("inbound.fileName", to_text), Field(alias="fileName")]
    label: Annotated[Text, Tolerant("inbound.label", to_text)]


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
    fields = validate_body(_INBOUND, body, adjusted, _INBOUND_IDENTITY)
    return ParsedInbound(pb.InboundMessage(**fields, channel=VIBER, raw_json=body.decode("utf-8")), adjusted)  # type: ignore[arg-type]
