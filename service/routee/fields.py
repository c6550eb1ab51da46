"""The field types of Routee's bodies: identifiers that must be usable, secondary fields that are tolerant (a
value of an unexpected type coerced where that is unambiguous, else left unset, and the adjustment noted), and
dates read as protobuf Timestamps."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Strict,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
)
from pydantic_core import core_schema
from typing_extensions import TypedDict  # pydantic validates typing.TypedDict only from Python 3.12

from service.domain.limits import MAX_ID_LENGTH


def no_nul(text: str) -> str:
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
class Tolerant:
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


def to_text(value: Any) -> str | None:
    """Numbers are unambiguous as text; booleans, lists and objects are not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return str(value) if isinstance(value, int) or math.isfinite(value) else None


def to_campaign(value: Any) -> str | None:
    text = to_text(value) if not isinstance(value, str) else value
    return None if text is None or "\x00" in text else text


_DECIMAL = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")


def to_number(value: Any) -> float | None:
    """A decimal number written as a string."""
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def to_strings(value: Any) -> list[str] | None:
    """One group given as a string is a list of one; numbers in a list are their text."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        texts = [item if isinstance(item, str) else to_text(item) for item in value]
        return [text for text in texts if text is not None]
    return None


def to_reason(value: Any) -> dict[str, str] | None:
    """A reason given as text is its detailed status (``"Not Viber User"``)."""
    return {"detailedStatus": value} if isinstance(value, str) else None


def unset(value: Any) -> None:
    return None


def text_only(value: Any) -> Any:
    # A number as a date would be a guess (seconds or milliseconds since when?).
    if not isinstance(value, str):
        raise ValueError("a date must be text")
    return value


CONFIG = ConfigDict(extra="ignore", allow_inf_nan=False)


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
class AsTimestamp:
    """Validated as a date (``strict``: RFC 3339 text only), kept as the fields of a protobuf Timestamp. A date
    without an offset is UTC; one out of range in UTC is refused."""

    strict: bool = True

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(_timestamp, core_schema.datetime_schema(strict=self.strict))


#: A secondary text field (with a Tolerant of its own).
Text = Annotated[str | None, Strict()]
RouteeTimestamp = Annotated[TimestampFields, AsTimestamp()]
