"""Personal data in Routee's bodies: phone numbers in E.164 form, erasing one person from what is stored, and
keeping only what the operator chose to keep (``--store-personal-data``).

A status callback names its recipient (``to``) and carries the message's text (``body``); a reply names who
sent it (``from``) and who it was sent to (``to``), and carries what they wrote (``message``, and a file or
media). Erasing a number removes it from the protobuf fields and from ``raw_json``, and from a reply it sent,
the text and media too. Minimising keeps, of every number, its country code and last three digits
(``masked``) or nothing (``none``), and no text. What is not personal (tracking ids, statuses, times, prices,
sender ids such as ``Routee``) always stays.
"""

from __future__ import annotations

import json
import re
from typing import Any

import phonenumbers

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.rules import FULL, MASKED, NONE

#: Separators people write inside numbers.
_SEPARATORS = re.compile(r"[\s().\-/]")
#: What may be a phone number inside any text (a quarantined body need not be JSON).
_CANDIDATE = re.compile(r"\+?\d[\d\s().\-/]{5,22}\d")
#: The JSON keys of a reply that hold what its sender wrote or sent, and of a callback that hold the message.
_REPLY_CONTENT = ("message", "media", "fileName")
_CALLBACK_CONTENT = ("body", "message")
#: The JSON keys that hold numbers (a sender id such as ``Routee`` in them is no number, and stays).
_NUMBER_KEYS = ("to", "from")
#: The protobuf fields of a reply that hold what its sender wrote or sent.
_REPLY_TEXT_FIELDS = ("text", "media_url", "file_name")


def e164(number: str) -> str | None:
    """The E.164 form of a phone number as written (``+30 690…``, ``0030690…``, ``30690…``), or None when it is
    not one (a sender id such as ``Routee``)."""
    compact = _SEPARATORS.sub("", number.strip())
    if compact.startswith("+"):
        digits = compact[1:]
    elif compact.startswith("00"):
        digits = compact[2:]
    else:
        digits = compact
    if not digits.isdigit() or not 7 <= len(digits) <= 15 or digits.startswith("0"):
        return None
    return "+" + digits


def mask(number: str) -> str:
    """A number with only its country code and last three digits left (``+30*******001``); what is no number,
    unchanged."""
    normal = e164(number)
    if normal is None:
        return number
    try:
        country = str(phonenumbers.parse(normal, None).country_code)
    except phonenumbers.NumberParseException:
        country = ""
    national = normal[1 + len(country) :]
    return f"+{country}{'*' * max(0, len(national) - 3)}{national[-3:]}"


def mentions(body: bytes, number: str) -> bool:
    """Whether a body, whatever its format, holds ``number`` (E.164) in any common way of writing it."""
    text = body.decode("utf-8", errors="replace")
    return any(e164(candidate) == number for candidate in _CANDIDATE.findall(text))


def erase_callback(serialized: bytes, number: str, sms: bool = False) -> bytes | None:
    """A stored status callback (``sms``: an SMS delivery report) without ``number`` as its recipient; None when it
    is not its recipient."""
    callback = (pb.SmsCallback if sms else pb.ViberCallback).FromString(serialized)
    if e164(callback.recipient) != number:
        return None
    callback.ClearField("recipient")
    callback.raw_json = _without(callback.raw_json, ("to",))
    return callback.SerializeToString()


def erase_reply(serialized: bytes, number: str) -> bytes | None:
    """A stored reply without ``number``: gone as its recipient, and as its sender together with what it wrote;
    None when it names ``number`` neither way."""
    message = pb.InboundMessage.FromString(serialized)
    sent_by, sent_to = e164(message.sender) == number, e164(message.recipient) == number
    if not sent_by and not sent_to:
        return None
    keys: tuple[str, ...] = ()
    if sent_by:
        for field in ("sender", *_REPLY_TEXT_FIELDS):
            message.ClearField(field)  # type: ignore[arg-type]
        keys += ("from", *_REPLY_CONTENT)
    if sent_to:
        message.ClearField("recipient")
        keys += ("to",)
    message.raw_json = _without(message.raw_json, keys)
    return message.SerializeToString()


def _without(raw_json: str, keys: tuple[str, ...]) -> str:
    """The JSON body without ``keys`` (at its top level); a body that is not a JSON object is dropped whole."""
    document = _json_object(raw_json)
    if document is None:
        return ""
    return json.dumps({key: value for key, value in document.items() if key not in keys}, ensure_ascii=False)


def _json_object(raw_json: str) -> dict[str, Any] | None:
    """A body's JSON object (None when it is no JSON object: its texts cannot be told apart)."""
    try:
        document: Any = json.loads(raw_json)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def minimise_callback(callback: pb.ViberCallback | pb.SmsCallback, mode: str) -> None:
    """Keep of a status callback only what ``mode`` allows, in place: its recipient masked (or gone), no text."""
    if mode == FULL:
        return
    if isinstance(callback, pb.SmsCallback):
        callback.ClearField("text")
    else:
        callback.ClearField("body")
    callback.recipient = _kept_number(callback.recipient, mode)
    callback.raw_json = _minimised_json(callback.raw_json, mode, _CALLBACK_CONTENT)


def minimise_reply(message: pb.InboundMessage, mode: str) -> None:
    """Keep of a reply only what ``mode`` allows, in place: its numbers masked (or gone), no text or media."""
    if mode == FULL:
        return
    for field in _REPLY_TEXT_FIELDS:
        message.ClearField(field)  # type: ignore[arg-type]
    message.sender = _kept_number(message.sender, mode)
    message.recipient = _kept_number(message.recipient, mode)
    message.raw_json = _minimised_json(message.raw_json, mode, _REPLY_CONTENT)


def minimise_body(body: bytes, mode: str, *, reply: bool) -> bytes:
    """A refused body as ``mode`` allows it kept: a JSON object minimised as its kind is; anything else, whose
    texts cannot be told apart, not at all (empty)."""
    if mode == FULL:
        return body
    minimised = _minimised_json(
        body.decode("utf-8", errors="replace"), mode, _REPLY_CONTENT if reply else _CALLBACK_CONTENT
    )
    return minimised.encode()


def _kept_number(value: str, mode: str) -> str:
    if e164(value) is None:
        return value  # A sender id, not a number.
    return mask(value) if mode == MASKED else ""


def _minimised_json(raw_json: str, mode: str, texts: tuple[str, ...]) -> str:
    """The JSON body with its numbers (``to``, ``from``) masked (or gone) and its text keys gone; a body that is
    not a JSON object, whose texts cannot be told apart, is dropped whole."""
    document = _json_object(raw_json)
    if document is None:
        return ""
    kept: dict[str, Any] = {}
    for key, value in document.items():
        if key in texts:
            continue
        if key in _NUMBER_KEYS and isinstance(value, str) and e164(value) is not None:
            if mode == NONE:
                continue
            value = mask(value)
        kept[key] = value
    return json.dumps(kept, ensure_ascii=False)
