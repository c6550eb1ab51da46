"""Personal data in Routee's bodies: phone numbers in E.164 form, and erasing one person from what is stored.

A status callback names its recipient (``to``); a reply names who sent it (``from``) and who it was sent to
(``to``), and carries what they wrote (``message``, and a file or media). Erasing a number removes it from the
protobuf fields and from ``raw_json``, and from a reply it sent, the text and media too; what is not personal
(tracking ids, statuses, times, prices) stays.
"""

from __future__ import annotations

import json
import re
from typing import Any

from routee.callbacks.v1 import callback_pb2 as pb

#: Separators people write inside numbers.
_SEPARATORS = re.compile(r"[\s().\-/]")
#: What may be a phone number inside any text (a quarantined body need not be JSON).
_CANDIDATE = re.compile(r"\+?\d[\d\s().\-/]{5,22}\d")
#: The JSON keys of a reply that hold what its sender wrote or sent.
_REPLY_CONTENT = ("message", "media", "fileName")


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


def mentions(body: bytes, number: str) -> bool:
    """Whether a body, whatever its format, holds ``number`` (E.164) in any common way of writing it."""
    text = body.decode("utf-8", errors="replace")
    return any(e164(candidate) == number for candidate in _CANDIDATE.findall(text))


def erase_callback(serialized: bytes, number: str) -> bytes | None:
    """A stored status callback without ``number`` as its recipient; None when it is not its recipient."""
    callback = pb.ViberCallback.FromString(serialized)
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
        for field in ("sender", "text", "media_url", "file_name"):
            message.ClearField(field)
        keys += ("from", *_REPLY_CONTENT)
    if sent_to:
        message.ClearField("recipient")
        keys += ("to",)
    message.raw_json = _without(message.raw_json, keys)
    return message.SerializeToString()


def _without(raw_json: str, keys: tuple[str, ...]) -> str:
    """The JSON body without ``keys`` (at its top level); a body that is not a JSON object is dropped whole."""
    try:
        document: Any = json.loads(raw_json)
    except ValueError:
        return ""
    if not isinstance(document, dict):
        return ""
    return json.dumps({key: value for key, value in document.items() if key not in keys}, ensure_ascii=False)
