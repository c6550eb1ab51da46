"""Page tokens of ListMessageStatuses: where the next page starts, tied to the request that made them.

A token is opaque to clients (base64url of a small JSON document): it names
the campaign and status filter of its request, and the last tracking id
listed. Pages are keyed by tracking id, so walking them lists every message
that existed at the start once, whatever is stored meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import json

from service.errors import InvalidArgumentError

_VERSION = 1


def make(campaign_tracking_id: str, statuses: frozenset[int], after_tracking_id: str) -> str:
    """The token of the page after ``after_tracking_id``."""
    document = {"v": _VERSION, "c": campaign_tracking_id, "s": sorted(statuses), "a": after_tracking_id}
    return base64.urlsafe_b64encode(json.dumps(document, separators=(",", ":")).encode()).decode().rstrip("=")


def read(token: str, campaign_tracking_id: str, statuses: frozenset[int]) -> str:
    """The tracking id a page starts after ("" for the first page); INVALID_ARGUMENT for a token that is not one
    of ours or belongs to another request."""
    if not token:
        return ""
    try:
        document = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        valid = isinstance(document, dict) and document.get("v") == _VERSION and isinstance(document.get("a"), str)
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise InvalidArgumentError("page_token is not a token this server made")
    if document["c"] != campaign_tracking_id or document["s"] != sorted(statuses):
        raise InvalidArgumentError("page_token belongs to another request (campaign or statuses differ)")
    after: str = document["a"]
    return after
