"""The objects of Routee's tracking API, read as the status callbacks they amount to."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.rules import SMS, VIBER
from service.routee.callbacks import parse_callback
from service.routee.sms import parse_sms

#: Reads a body in the callback's shape of a channel into a callback (RejectedError when it lacks what identifies
#: a status).
ParseTracked = Callable[[bytes, int], pb.ViberCallback | pb.SmsCallback]


def parse_tracked(body: bytes, channel: int = VIBER) -> pb.ViberCallback | pb.SmsCallback:
    """The ingress's callback model of a channel, for what Routee's tracking API returns (in the callback's shape)."""
    return (parse_sms if channel == SMS else parse_callback)(body).callback


def tracked_id(callback: pb.ViberCallback | pb.SmsCallback) -> str:
    """The tracking id of a callback of either channel."""
    return callback.message_id if isinstance(callback, pb.SmsCallback) else callback.tracking_id


def as_callback(item: dict[str, Any], campaign_tracking_id: str = "") -> dict[str, Any]:
    """A tracking API object in the shape of a status callback, so the ingress's own model validates it.

    The API says ``status.status`` and ``status.date`` where callbacks say ``status.name`` and
    ``status.updatedDate``; its message text is ``message``, not ``body.text``. A campaign page names the
    campaign; a single lookup does not, so the caller gives the one it knows.
    """
    status = item.get("status") if isinstance(item.get("status"), dict) else {}
    assert isinstance(status, dict)
    callback: dict[str, Any] = {
        key: item[key]
        for key in ("trackingId", "to", "from", "country", "ttl", "price", "applicationName", "direction", "label")
        if key in item
    }
    callback["campaignTrackingId"] = item.get("campaignTrackingId") or campaign_tracking_id or None
    callback["originatingService"] = item.get("originatingService")
    callback["status"] = {"name": status.get("status"), "updatedDate": status.get("date")}
    if status.get("reason") is not None:
        callback["status"]["reason"] = status["reason"]
    body = {
        "text": item.get("message"),
        "imageURL": item.get("imageURL"),
        "viberAction": item.get("viberAction"),
        "viberFile": item.get("viberFile"),
    }
    if any(value is not None for value in body.values()):
        callback["body"] = body
    return callback


def as_sms_report(item: dict[str, Any], campaign_tracking_id: str = "") -> dict[str, Any]:
    """An SMS tracking API object (one part) in the shape of a delivery report: ``status.status`` and
    ``status.date`` become ``status.name`` and ``status.updatedDate``, ``body`` the ``message``, ``campaign`` the
    ``campaignName``."""
    status = item.get("status") if isinstance(item.get("status"), dict) else {}
    assert isinstance(status, dict)
    report: dict[str, Any] = {key: value for key, value in item.items() if key not in ("status", "body", "campaign")}
    report["campaignTrackingId"] = item.get("campaignTrackingId") or campaign_tracking_id or None
    report["campaignName"] = item.get("campaignName") or item.get("campaign")
    report["message"] = item.get("body")
    report["status"] = {"name": status.get("status"), "updatedDate": status.get("date")}
    if status.get("reason") is not None:
        report["status"]["reason"] = status["reason"]
    return report


def tracked_callback(
    parse: ParseTracked, item: dict[str, Any], campaign_tracking_id: str = "", channel: int = VIBER
) -> pb.ViberCallback | pb.SmsCallback:
    """The callback an API object of a channel amounts to, its ``raw_json`` the API's own JSON (RejectedError when
    the API's object lacks what identifies a status)."""
    shape = as_sms_report if channel == SMS else as_callback
    callback = parse(json.dumps(shape(item, campaign_tracking_id)).encode(), channel)
    callback.raw_json = json.dumps(item, ensure_ascii=False)
    return callback
