"""``routee-callbacks simulate``: post realistic Routee callbacks (and replies) to a running service: Viber, SMS
or both (``--channel``).

Each message follows a realistic life (Queued → Delivered → Seen, failures with
reasons, expire-on-delivery), posted with Routee's quirks: status names in
varying case, dates with and without milliseconds, decimal TTLs, nulls and
undocumented fields, and retries of callbacks already sent. An SMS has 1 to 3
parts, each with reports of its own (Queued → Sent → Delivered; one part
undelivered; every part failed, unsent or only sent). With ``--replies`` some
recipients of delivered messages answer, as Routee posts to the campaign's
``inboundUrl`` (an inbound SMS to the number's ``inboundSmsCallbackUrl``).
The JSON summary says how many messages should end in each status.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

# (status name, detailed status, description, seconds after the previous status)
Step = tuple[str, str | None, str | None, float]

SCENARIOS: list[tuple[float, list[Step]]] = [
    (
        0.45,
        [
            ("Queued", None, None, 0),
            ("Delivered", "Delivered", "Delivered to the handset", 2),
            ("Seen", None, None, 40),
        ],
    ),
    (0.15, [("Queued", None, None, 0), ("Delivered", "Delivered", "Delivered to the handset", 3)]),
    (
        0.10,
        [
            ("Queued", None, None, 0),
            ("Delivered", "Delivered", "Delivered to the handset", 2),
            ("Expired", "TTL Expired", "Expired on delivery: no Seen status within TTL", 30),
        ],
    ),
    (0.10, [("Queued", None, None, 0), ("Failed", "Not Viber User", "The recipient is not a Viber user", 1)]),
    (0.05, [("Queued", None, None, 0), ("Failed", "Opted Out", "The recipient opted out", 1)]),
    (0.05, [("Queued", None, None, 0), ("Undelivered", "Timed Out", "The handset did not answer in time", 60)]),
    (0.05, [("Queued", None, None, 0), ("Undelivered", "Unsupported Equipment", "The device cannot show it", 5)]),
    (0.05, [("Unsent", "System Failure", "Insufficient balance", 0)]),
]


# (weight, the status every part ends in, the one part that ends otherwise (its status, detailed status))
SMS_SCENARIOS: list[tuple[float, str, tuple[str, str] | None]] = [
    (0.60, "Delivered", None),
    (0.15, "Delivered", ("Undelivered", "Undelivered on Handset")),
    (0.10, "Sent", None),
    (0.10, "Failed", None),
    (0.05, "Unsent", None),
]
SMS_TEXT = "Spring sale: 20% off every item in store today and tomorrow. Show this SMS at the till. Reply STOP to quit."
CHANNELS = ("viber", "sms", "mixed")


def add_command(commands: Any) -> None:
    """Register ``simulate`` on the subcommand parsers."""
    simulate = commands.add_parser("simulate", help="post realistic Routee callbacks (Viber, SMS) to a running service")
    simulate.add_argument("--url", required=True, help="callback URL, e.g. http://127.0.0.1:8080/v1/callbacks/viber")
    simulate.add_argument(
        "--channel",
        choices=CHANNELS,
        default="viber",
        help="Viber messages, multipart SMS, or half of each (mixed); default: viber",
    )
    simulate.add_argument(
        "--sms-url",
        default=None,
        metavar="URL",
        help="where SMS reports go (default: --url ending in /sms, not /viber)",
    )
    simulate.add_argument("--messages", type=int, default=10, metavar="N", help="messages to simulate (default: 10)")
    simulate.add_argument("--campaign", default=None, metavar="ID", help="campaign tracking id (default: a new one)")
    simulate.add_argument(
        "--replies", type=int, default=0, metavar="N", help="recipients of delivered messages who reply (default: 0)"
    )
    simulate.add_argument(
        "--inbound-url", default=None, metavar="URL", help="where replies go (default: --url followed by /inbound)"
    )
    simulate.add_argument("--duplicates", action="store_true", help="send about a third of the callbacks twice")
    simulate.add_argument("--shuffle", action="store_true", help="send in random order, as Routee's retries do")
    simulate.add_argument("--rate", type=float, default=0.0, metavar="R", help="callbacks per second (0: unlimited)")
    simulate.add_argument("--concurrency", type=int, default=4, metavar="C", help="parallel connections (default: 4)")
    simulate.add_argument("--seed", type=int, default=None, help="random seed, for repeatable runs")
    simulate.add_argument("--json", action="store_true", help="print the summary as JSON")
    simulate.set_defaults(run=run_simulate)


def _quirky(name: str, rng: random.Random) -> str:
    return rng.choice([name, name, name.upper(), name.lower()])


def _date(moment: datetime, rng: random.Random) -> str:
    if rng.random() < 0.3:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def build_callbacks(messages: int, campaign: str, rng: random.Random, start: datetime) -> list[dict[str, Any]]:
    """Build every callback of a campaign, in event order per message."""
    weights = [weight for weight, _ in SCENARIOS]
    callbacks = []
    for index in range(messages):
        tracking_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        recipient = f"+3069{rng.randint(0, 99_999_999):08d}"
        steps = rng.choices([steps for _, steps in SCENARIOS], weights)[0]
        moment = start + timedelta(seconds=index * 0.05)
        ttl: float = rng.choice([3600, 86400, 30.5])
        for name, detailed, description, delay in steps:
            moment += timedelta(seconds=delay, milliseconds=rng.randint(0, 999))
            status: dict[str, Any] = {"name": _quirky(name, rng), "updatedDate": _date(moment, rng)}
            if detailed is not None:
                status["reason"] = {"detailedStatus": detailed, "description": description}
            callbacks.append(
                {
                    "trackingId": tracking_id,
                    "campaignTrackingId": campaign,
                    "to": recipient,
                    "from": "Routee",
                    "groups": rng.choice([["vip"], [], None]),
                    "country": "GR",
                    "status": status,
                    "body": {"text": "Spring sale: 20% off today", "imageURL": None},
                    "ttl": ttl,
                    "label": "simulated",
                    "inboundUrl": None,
                    "applicationName": "default",
                    "price": 0.0123,
                    "direction": "Outbound",
                    "originatingService": "Viber",
                    "createdAt": _date(start, rng),
                    "simulated": True,  # Routee may add fields at any time.
                }
            )
    return callbacks


def build_sms(messages: int, campaign: str, rng: random.Random, start: datetime) -> list[dict[str, Any]]:
    """Build every delivery report of ``messages`` SMS of 1 to 3 parts, in event order per part."""
    reports = []
    for index in range(messages):
        message_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        recipient = f"+3069{rng.randint(0, 99_999_999):08d}"
        _, final, failing = rng.choices(SMS_SCENARIOS, [weight for weight, *_ in SMS_SCENARIOS])[0]
        parts = rng.choice([1, 2, 2, 3])
        failing_part = rng.randint(1, parts)
        for part in range(1, parts + 1):
            moment = start + timedelta(seconds=index * 0.05, milliseconds=rng.randint(0, 999))
            end, detailed = (failing[0], failing[1]) if failing and part == failing_part else (final, None)
            steps = ["Queued", "Sent", end] if end in ("Delivered", "Undelivered") else ["Queued", end]
            for name in dict.fromkeys(steps):  # "Sent" once when it is the end
                moment += timedelta(seconds=rng.randint(1, 20), milliseconds=rng.randint(0, 999))
                status: dict[str, Any] = {"name": _quirky(name, rng), "updatedDate": _date(moment, rng)}
                if name == end and detailed:
                    status["reason"] = {"detailedStatus": detailed, "description": "Reported by the operator"}
                reports.append(
                    {
                        "messageId": message_id,
                        "smsId": f"{message_id[:8]}-p{part}",
                        "part": part,
                        "parts": parts,
                        "campaignTrackingId": campaign,
                        "label": "simulated",
                        "to": recipient,
                        "from": "Routee",
                        "country": "GR",
                        "operator": rng.choice(["Cosmote", "Vodafone", "Nova", None]),
                        "groups": rng.choice([["vip"], []]),
                        "campaignName": "Spring sale",
                        "status": status,
                        "message": SMS_TEXT,
                        "applicationName": "default",
                        "latency": rng.randint(200, 5000) if name == "Delivered" else None,
                        "price": 0.035,
                        "direction": "Outbound",
                        "originatingService": "Sms",
                    }
                )
    return reports


def expected_statuses(callbacks: list[dict[str, Any]], reports: list[dict[str, Any]]) -> dict[str, int]:
    """How many messages should end in each status: a Viber message in its last step's, an SMS in its scenario's
    (read back from its reports, not from the service's rule)."""
    final: dict[str, str] = {}
    for callback in callbacks:
        final[callback["trackingId"]] = callback["status"]["name"].lower()
    parts: dict[str, dict[int, str]] = {}
    for report in reports:
        parts.setdefault(report["messageId"], {})[report["part"]] = report["status"]["name"].lower()
    for message_id, ends in parts.items():
        names = set(ends.values())
        final[message_id] = next((bad for bad in ("undelivered", "failed", "unsent") if bad in names), None) or (
            "sent" if "sent" in names else "delivered"
        )
    return dict(sorted(Counter(final.values()).items()))


def build_sms_inbound(reports: list[dict[str, Any]], count: int, rng: random.Random) -> list[dict[str, Any]]:
    """Inbound SMS from the recipients of ``count`` delivered SMS, as Routee posts them to
    ``inboundSmsCallbackUrl``."""
    delivered = {report["messageId"]: report for report in reports if report["status"]["name"].lower() == "delivered"}
    inbound = []
    for report in rng.sample(list(delivered.values()), k=min(count, len(delivered))):
        sent = datetime.fromisoformat(report["status"]["updatedDate"].replace("Z", "+00:00"))
        text = rng.choice([*REPLY_TEXTS[:-1], "Is the offer valid for the shoes in the window too? " * 3])
        inbound.append(
            {
                "messageId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "from": report["to"],
                "to": "12345",
                "message": text,
                "parts": 1 if len(text) <= 160 else 2,
                "originatingService": "Sms",
                "direction": "Inbound",
                "receivedDate": _date(sent + timedelta(seconds=rng.randint(5, 600)), rng),
            }
        )
    return inbound


REPLY_TEXTS = ["YES", "yes please", "No thanks", "STOP", "Tell me more \U0001f44d", ""]


def build_replies(callbacks: list[dict[str, Any]], count: int, rng: random.Random) -> list[dict[str, Any]]:
    """Replies from the recipients of ``count`` delivered messages, as Routee posts them to ``inboundUrl``."""
    delivered: dict[str, dict[str, Any]] = {}
    for callback in callbacks:
        if callback["status"]["name"].lower() in ("delivered", "seen"):
            delivered[callback["trackingId"]] = callback  # The last one: the reply comes after it.
    replies = []
    for callback in rng.sample(list(delivered.values()), k=min(count, len(delivered))):
        seen = datetime.fromisoformat(callback["status"]["updatedDate"].replace("Z", "+00:00"))
        text = rng.choice(REPLY_TEXTS)
        reply: dict[str, Any] = {
            "from": callback["to"],
            "to": "Routee",
            "message": text,
            "sentDate": _date(seen + timedelta(seconds=rng.randint(5, 600), milliseconds=rng.randint(0, 999)), rng),
            "campaignName": "Spring sale",
            "campaignTrackingId": callback["campaignTrackingId"],
            "referenceTrackingId": callback["trackingId"],
            "direction": "Inbound",
            "label": "simulated",
        }
        if not text:  # A picture instead of words; Routee's two spellings of the file name.
            reply["media"] = "https://media.example.com/viber/receipt.jpg"
            reply["fileName" if rng.random() < 0.5 else "filename"] = "receipt.jpg"
        replies.append(reply)
    return replies


@dataclass
class _Sender:
    rate: float
    results: Counter[str]
    lock: threading.Lock
    start: float

    def send_all(self, posts: list[tuple[str, bytes]], next_index: list[int]) -> None:
        """Post (URL, body) pairs, taking the next one until none is left; one connection per server."""
        connections: dict[str, http.client.HTTPConnection] = {}
        headers = {"Content-Type": "application/json"}
        try:
            while True:
                with self.lock:
                    index = next_index[0]
                    next_index[0] += 1
                if index >= len(posts):
                    return
                if self.rate > 0:
                    time.sleep(max(0.0, self._due(index) - time.monotonic()))
                url, body = posts[index]
                parts = urlsplit(url)
                if parts.netloc not in connections:
                    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
                    connections[parts.netloc] = kind(parts.hostname or "127.0.0.1", parts.port, timeout=10)
                outcome = self._post(connections[parts.netloc], parts.path or "/", body, headers)
                with self.lock:
                    self.results[outcome] += 1
        finally:
            for connection in connections.values():
                connection.close()

    def _due(self, index: int) -> float:
        return self.start + index / self.rate

    def _post(self, connection: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> str:
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            return "connection_error"
        if response.status == 200:
            return str(json.loads(answer).get("status", "ok"))
        return f"http_{response.status}"


def _send(bodies: list[tuple[str, bytes]], rate: float, concurrency: int) -> tuple[_Sender, float]:
    """Post every body from ``concurrency`` threads at ``rate`` in all; the sender's results, and the seconds."""
    sender = _Sender(rate, Counter(), threading.Lock(), start=time.monotonic())
    next_index = [0]
    threads = [threading.Thread(target=sender.send_all, args=(bodies, next_index)) for _ in range(max(1, concurrency))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sender, time.monotonic() - started


#: One post: where to, the document, and the date it is ordered by.
Post = tuple[str, dict[str, Any], str]


def _campaign_posts(args: argparse.Namespace, rng: random.Random, campaign: str) -> tuple[list[Post], dict[str, Any]]:
    """Every post of the simulated campaign, in event order, and what the summary says of it."""
    start = datetime.now(UTC).replace(microsecond=0)
    sms_messages = {"viber": 0, "sms": args.messages, "mixed": args.messages // 2}[args.channel]
    callbacks = build_callbacks(args.messages - sms_messages, campaign, rng, start)
    reports = build_sms(sms_messages, campaign, rng, start)
    replies = build_replies(callbacks, args.replies // 2 if reports else args.replies, rng)
    sms_inbound = build_sms_inbound(reports, args.replies - len(replies), rng)
    sms_url = args.sms_url or (args.url if args.channel == "sms" else _sms_url(args.url))
    inbound_url = args.inbound_url or args.url.rstrip("/") + "/inbound"
    posts = [(args.url, callback, callback["status"]["updatedDate"]) for callback in callbacks]
    posts += [(inbound_url, reply, reply["sentDate"]) for reply in replies]
    posts += [(sms_url, report, report["status"]["updatedDate"]) for report in reports]
    posts += [(sms_url.rstrip("/") + "/inbound", message, message["receivedDate"]) for message in sms_inbound]
    facts = {
        "distinct_events": len(callbacks) + len(reports),
        "replies": len(replies) + len(sms_inbound),
        "sms_messages": sms_messages,
        "expected_statuses": expected_statuses(callbacks, reports),
    }
    return posts, facts


def run_simulate(args: argparse.Namespace) -> int:
    """Post the simulated campaign; exit 0 when every callback got 200."""
    rng = random.Random(args.seed)
    campaign = args.campaign or str(uuid.UUID(int=rng.getrandbits(128), version=4))
    posts, facts = _campaign_posts(args, rng, campaign)
    if args.duplicates:
        posts += rng.sample(posts, k=len(posts) // 3)
    if args.shuffle:
        rng.shuffle(posts)
    else:
        posts.sort(key=lambda post: post[2])
    bodies = [(url, json.dumps(document).encode()) for url, document, _ in posts]
    sender, elapsed = _send(bodies, args.rate, args.concurrency)
    summary = {
        "campaign_tracking_id": campaign,
        "messages": args.messages,
        **facts,
        "sent": len(bodies),
        "outcomes": dict(sorted(sender.results.items())),
        "seconds": round(elapsed, 3),
        "per_second": round(len(bodies) / elapsed, 1) if elapsed else None,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"campaign {campaign}: {args.messages} messages, {facts['distinct_events']} distinct callbacks,"
            f" {facts['replies']} replies, {len(bodies)} sent"
        )
        print(f"outcomes: {', '.join(f'{k}={v}' for k, v in summary['outcomes'].items())}")
        print(f"{elapsed:.2f}s, {summary['per_second']} callbacks/s")
    ok = sum(count for outcome, count in sender.results.items() if outcome in ("accepted", "duplicate"))
    if ok != len(bodies):
        print(f"routee-callbacks: error: {len(bodies) - ok} callbacks were not accepted", file=sys.stderr)
        return 1
    return 0


def _sms_url(url: str) -> str:
    """The SMS reports' URL beside a Viber callback URL (``…/viber`` → ``…/sms``)."""
    base, _, last = url.rstrip("/").rpartition("/")
    return f"{base}/sms" if last == "viber" else url.rstrip("/") + "/sms"
