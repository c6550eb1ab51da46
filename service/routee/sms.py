"""What Routee posts about SMS — the delivery report of one part, and the inbound SMS (MO) — as pydantic schemas,
and their conversion to protobuf, on the terms of ``service.routee.callbacks``.

A report is identified by ``messageId``, ``part`` (a missing or null part is part 1 of 1), ``status.name`` and
``status.updatedDate``; an inbound SMS by ``messageId``, and it needs ``from`` and ``receivedDate``. Every other
field is tolerant.
"""

from __future__ import annotations

from typing import Annotated, Any, Required

from pydantic import AfterValidator, BeforeValidator, Field, Strict, TypeAdapter
from typing_extensions import TypedDict  # pydantic validates typing.TypedDict only from Python 3.12

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.limits import MAX_SMS_PARTS
from service.domain.rules import SMS
from service.routee.callbacks import Status, UserNumber, validate_body, with_status
from service.routee.fields import (
    CONFIG,
    RequiredText,
    RouteeTimestamp,
    Text,
    Tolerant,
    no_nul,
    to_campaign,
    to_number,
    to_strings,
    to_text,
)

# TOLERATED_FIELDS is complete once this module's schemas (the last) are built: it is read from here.
from service.routee.fields import TOLERATED_FIELDS as TOLERATED_FIELDS
from service.routee.parsed import Adjustment, ParsedCallback, ParsedInbound


def _whole(value: Any) -> Any:
    """A whole number written with a fraction (``2.0``, an integer to JSON) is the integer."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _count(value: Any) -> int | None:
    """A count of parts written as text (``"2"``) or with a fraction (``2.0``) is the number."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value if isinstance(value := _whole(value), int) and not isinstance(value, bool) else None


PartNumber = Annotated[int, Strict(), Field(ge=1, le=MAX_SMS_PARTS)]


class SmsCallback(TypedDict, total=False):
    """One SMS delivery report (of one part) as Routee posts it."""

    __pydantic_config__ = CONFIG  # type: ignore[misc]
    message_id: Required[Annotated[RequiredText, Field(alias="messageId")]]
    part: Annotated[PartNumber | None, BeforeValidator(_whole)]
    parts: Annotated[PartNumber | None, Tolerant("sms.parts", _count)]
    sms_id: Annotated[Text, Tolerant("sms.smsId", to_text), Field(alias="smsId")]
    campaign_tracking_id: Annotated[
        Text,
        AfterValidator(no_nul),
        Tolerant("sms.campaignTrackingId", to_campaign),
        Field(alias="campaignTrackingId"),
    ]
    recipient: Annotated[Text, Tolerant("sms.to", to_text), Field(alias="to")]
    sender: Annotated[Text, Tolerant("sms.from", to_text), Field(alias="from")]
    groups: Annotated[list[str] | None, Strict(), Tolerant("sms.groups", to_strings)]
    country: Annotated[Text, Tolerant("sms.country", to_text)]
    operator: Annotated[Text, Tolerant("sms.operator", to_text)]
    status: Required[Annotated[Status, AfterValidator(with_status)]]
    text: Annotated[Text, Tolerant("sms.message", to_text), Field(alias="message")]
    label: Annotated[Text, Tolerant("sms.label", to_text)]
    campaign_name: Annotated[Text, Tolerant("sms.campaignName", to_text), Field(alias="campaignName")]
    application_name: Annotated[Text, Tolerant("sms.applicationName", to_text), Field(alias="applicationName")]
    latency: Annotated[float | None, Strict(), Tolerant("sms.latency", to_number)]
    price: Annotated[float | None, Strict(), Tolerant("sms.price", to_number)]
    direction: Annotated[Text, Tolerant("sms.direction", to_text)]
    originating_service: Annotated[Text, Tolerant("sms.originatingService", to_text), Field(alias="originatingService")]


def _one_of_one(report: dict[str, Any]) -> dict[str, Any]:
    """A report without a part is part 1; without a count, of as many parts as its part says."""
    report["part"] = report.get("part") or 1
    report["parts"] = max(report.get("parts") or 1, report["part"])
    return report


_REPORT: TypeAdapter[SmsCallback] = TypeAdapter(Annotated[SmsCallback, AfterValidator(_one_of_one)])
_REPORT_IDENTITY = frozenset({"messageId", "part", "status.name", "status.updatedDate"})


def parse_sms(body: bytes) -> ParsedCallback:
    """Validate a raw SMS delivery report and convert it to protobuf, tolerating what can be tolerated.

    Raises MalformedJsonError when the body is not JSON (or not UTF-8) and InvalidCallbackError, naming the
    field, when ``messageId``, ``part``, ``status.name`` or ``status.updatedDate`` is missing or unusable (or the
    body is not a JSON object).
    """
    adjusted: list[Adjustment] = []
    fields = validate_body(_REPORT, body, adjusted, _REPORT_IDENTITY)
    return ParsedCallback(pb.SmsCallback(**fields, raw_json=body.decode("utf-8")), adjusted)


class SmsInbound(TypedDict, total=False):
    """One inbound SMS (MO) as Routee posts it to a number's ``inboundSmsCallbackUrl``."""

    __pydantic_config__ = CONFIG  # type: ignore[misc]
    message_id: Required[Annotated[RequiredText, Field(alias="messageId")]]
    sender: Required[Annotated[UserNumber, Field(alias="from")]]
    send_time: Required[Annotated[RouteeTimestamp, Field(alias="receivedDate")]]
    recipient: Annotated[Text, Tolerant("sms_inbound.to", to_text), Field(alias="to")]
    text: Annotated[Text, Tolerant("sms_inbound.message", to_text), Field(alias="message")]
    parts: Annotated[PartNumber | None, Tolerant("sms_inbound.parts", _count)]
    direction: Annotated[Text, Tolerant("sms_inbound.direction", to_text)]
    originating_service: Annotated[
        Text, Tolerant("sms_inbound.originatingService", to_text), Field(alias="originatingService")
    ]


_INBOUND: TypeAdapter[SmsInbound] = TypeAdapter(SmsInbound)
_INBOUND_IDENTITY = frozenset({"messageId", "from", "receivedDate"})


def parse_sms_inbound(body: bytes) -> ParsedInbound:
    """Validate a raw inbound SMS and convert it to protobuf (an InboundMessage of channel SMS).

    Raises MalformedJsonError when the body is not JSON (or not UTF-8) and InvalidCallbackError, naming the
    field, when ``messageId``, ``from`` or ``receivedDate`` is missing or unusable.
    """
    adjusted: list[Adjustment] = []
    fields = validate_body(_INBOUND, body, adjusted, _INBOUND_IDENTITY)
    message = pb.InboundMessage(**fields, channel=SMS, raw_json=body.decode("utf-8"))  # type: ignore[arg-type]
    return ParsedInbound(message, adjusted)
