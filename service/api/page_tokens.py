"""Page tokens of ListMessageStatuses: where the next page starts, tied to the request that made them.

A token is opaque to clients (base64url of a small JSON document): it names
the campaign, status and channel filters of its request (a token without
channels, made before they existed, filters none), and the last tracking id
listed. Pages are keyed by tracking id, so walking them lists every message
that existed at the start once, whatever is stored meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from service.domain.errors import InvalidArgumentError
from service.domain.limits import MAX_ID_LENGTH

_VERSION = 1
#: No token this server makes is longer: two ids of the longest length (4 bytes a character), the statuses
#: and the JSON around them, in base64.
MAX_PAGE_TOKEN_LENGTH = (2 * 4 * MAX_ID_LENGTH + 256) * 4 // 3 + 4


def make(
    campaign_tracking_id: str, statuses: frozenset[int], after_tracking_id: str, channels: frozenset[int] = frozenset()
) -> str:
    """The token of the page after ``after_tracking_id``."""
    document: dict[str, Any] = {"v": _VERSION, "c": campaign_tracking_id, "s": sorted(statuses), "a": after_tracking_id}
    if channels:
        document["h"] = sorted(channels)
    return (
        base64.urlsafe_b64encode(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode())
        .decode()
        .rstrip("=")
    )


def read(
    token: str, campaign_tracking_id: str, statuses: frozenset[int], channels: frozenset[int] = frozenset()
) -> str:
    """The tracking id a page starts after ("" for the first page); INVALID_ARGUMENT for a token that is not one
    of ours (whatever its size, shape or depth) or belongs to another request."""
    if not token:
        return ""
    document = _decode(token)
    if (
        document["c"] != campaign_tracking_id
        or document["s"] != sorted(statuses)
        or document.get("h", []) != sorted(channels)
    ):
        raise InvalidArgumentError("page_token belongs to another request (campaign, statuses or channels differ)")
    after: str = document["a"]
    return after


def _decode(token: str) -> dict[str, Any]:
    """The token's document, checked field by field; no token of ours is longer than MAX_PAGE_TOKEN_LENGTH."""
    if len(token) > MAX_PAGE_TOKEN_LENGTH:
        raise InvalidArgumentError(f"page_token is longer than any token this server makes ({len(token)} characters)")
    try:
        document = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack.
        document = None
    if not (
        isinstance(document, dict)
        and document.get("v") == _VERSION
        and isinstance(document.get("a"), str)
        and isinstance(document.get("c"), str)
        and isinstance(document.get("s"), list)
    ):
        raise InvalidArgumentError("page_token is not a token this server made")
    return document
