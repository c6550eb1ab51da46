"""Client subcommands of ``routee-callbacks``, over gRPC: ``status``, ``watch`` (status updates or replies) and
``campaign`` (counts, or the list of a campaign's messages)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from routee.callbacks.v1 import callback_pb2 as pb
from routee.callbacks.v1 import message_status_service_pb2 as pb2
from routee.callbacks.v1 import message_status_service_pb2_grpc as pb2_grpc

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}


def add_commands(commands: Any, default_target: str) -> None:
    """Register ``status`` and ``watch`` on the subcommand parsers."""
    status = commands.add_parser("status", help="show the current status and history of one message")
    status.add_argument("tracking_id", metavar="TRACKING_ID")
    status.add_argument("--grpc-target", default=default_target, metavar="HOST:PORT", help="(default: %(default)s)")
    status.add_argument("--json", action="store_true", help="print the response as JSON")
    status.set_defaults(run=run_status)

    watch = commands.add_parser(
        "watch", help="print status updates (or, with --inbound, replies) as they arrive; resumes by itself"
    )
    watch.add_argument("--inbound", action="store_true", help="inbound messages (replies) instead of status updates")
    watch.add_argument("--campaign", default="", metavar="ID", help="only this campaign (default: every campaign)")
    watch.add_argument("--after-sequence", type=int, metavar="N", help="replay what follows sequence N first")
    watch.add_argument("--grpc-target", default=default_target, metavar="HOST:PORT", help="(default: %(default)s)")
    watch.add_argument("--json", action="store_true", help="print each update as JSON")
    watch.set_defaults(run=run_watch)
    campaign = commands.add_parser(
        "campaign", help="count a campaign's messages by current status, or (--list) list them with their status"
    )
    campaign.add_argument("campaign_tracking_id", metavar="ID")
    campaign.add_argument("--list", action="store_true", help="list the campaign's messages instead")
    campaign.add_argument(
        "--status",
        action="append",
        default=[],
        type=_status_value,
        metavar="S",
        help="with --list: only messages whose current status is S (queued, delivered, seen...); repeatable",
    )
    campaign.add_argument("--grpc-target", default=default_target, metavar="HOST:PORT", help="(default: %(default)s)")
    campaign.add_argument("--json", action="store_true", help="print JSON (with --list, one object per line)")
    campaign.set_defaults(run=run_campaign)
    for command in (status, watch, campaign):
        command.add_argument("--tls-ca", type=Path, metavar="FILE", help="CA certificate (PEM): connect over TLS")
        command.add_argument("--tls-cert", type=Path, metavar="FILE", help="client certificate (PEM) for mutual TLS")
        command.add_argument("--tls-key", type=Path, metavar="FILE", help="private key (PEM) of --tls-cert")


def channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to --grpc-target: over TLS when --tls-ca is given (with a client certificate when asked)."""
    if args.tls_ca is None:
        if args.tls_cert or args.tls_key:
            raise SystemExit("routee-callbacks: error: --tls-cert and --tls-key need --tls-ca")
        return grpc.insecure_channel(args.grpc_target)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("routee-callbacks: error: --tls-cert and --tls-key go together")
    try:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=args.tls_ca.read_bytes(),
            private_key=args.tls_key.read_bytes() if args.tls_key else None,
            certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
        )
    except OSError as ex:
        raise SystemExit(f"routee-callbacks: error: {ex.filename}: {ex.strerror}") from None
    return grpc.secure_channel(args.grpc_target, credentials)


def _status_value(name: str) -> int:
    try:
        return pb.MessageStatus.Value(f"MESSAGE_STATUS_{name.strip().upper()}")
    except ValueError:
        known = ", ".join(n.removeprefix("MESSAGE_STATUS_").lower() for n in pb.MessageStatus.keys()[1:])
        raise argparse.ArgumentTypeError(f"{name!r} is not a status ({known})") from None


def _status_name(value: int) -> str:
    return pb.MessageStatus.Name(value).removeprefix("MESSAGE_STATUS_")  # type: ignore[arg-type]


def run_status(args: argparse.Namespace) -> int:
    """Print one message's status; exit 1 when it is unknown or the server fails."""
    with channel(args) as open_channel:
        stub = pb2_grpc.MessageStatusServiceStub(open_channel)
        try:
            response = stub.GetMessageStatus(pb2.GetMessageStatusRequest(tracking_id=args.tracking_id), timeout=10)
        except grpc.RpcError as ex:
            print(f"routee-callbacks: error: {ex.code().name}: {ex.details()}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(MessageToDict(response), indent=2))
        return 0
    print(f"{response.tracking_id}  {_status_name(response.status)} ({response.status_name})")
    print(
        f"channel: {_channel_name(response.channel)}  campaign: {response.campaign_tracking_id or '-'}"
        f"  sequence: {response.sequence}"
    )
    for part in response.parts:
        print(
            f"  part {part.part}/{response.sms_callback.parts or len(response.parts)}  {_status_name(part.status):<11}"
            f" {part.status_name:<12} {part.update_time.ToJsonString()}  sms {part.sms_id or '-'}  seq {part.sequence}"
        )
    for event in response.events:
        of_part = f" part {event.part}" if event.part else ""
        print(
            f"  {event.update_time.ToJsonString()}  {_status_name(event.status):<11} {event.status_name:<12}"
            f" seq {event.sequence}{of_part}"
        )
    for reply in response.replies:
        print(f"  reply {_reply_line(reply)}")
    return 0


def _reply_line(reply: pb.InboundMessage) -> str:
    media = f"  [{reply.file_name or 'media'}: {reply.media_url}]" if reply.media_url else ""
    return (
        f"{reply.send_time.ToJsonString()}  {_channel_name(reply.channel or pb.CHANNEL_VIBER)}  from {reply.sender}"
        f"  seq {reply.sequence}  {reply.text!r}{media}"
    )


def _channel_name(value: int) -> str:
    known: dict[int, str] = {
        int(channel): name.removeprefix("CHANNEL_").lower() for name, channel in pb.Channel.items()
    }
    return known.get(value, str(value))


def _status_line(update: pb2.StatusUpdate) -> str:
    if update.channel == pb.CHANNEL_SMS:
        message = _status_name(update.message_status)
        current = f"  message {message}" if update.is_current else f"  (message stays {message})"
        return (
            f"{update.sequence:>8}  {update.update_time.ToJsonString()}  sms    {update.tracking_id}"
            f" part {update.part}/{update.sms_callback.parts}  {_status_name(update.status)} ({update.status_name})"
            f"{current}"
        )
    current = "" if update.is_current else "  (late: not current)"
    return (
        f"{update.sequence:>8}  {update.update_time.ToJsonString()}  viber  {update.tracking_id}"
        f"  {_status_name(update.status)} ({update.status_name}){current}"
    )


def _stream(stub: pb2_grpc.MessageStatusServiceStub, args: argparse.Namespace, after: int | None) -> Any:
    """The stream ``watch`` follows, from after ``after``."""
    if args.inbound:
        inbound = pb2.StreamInboundMessagesRequest(campaign_tracking_id=args.campaign)
        if after is not None:
            inbound.after_sequence = after
        return stub.StreamInboundMessages(inbound)
    request = pb2.StreamStatusUpdatesRequest(campaign_tracking_id=args.campaign)
    if after is not None:
        request.after_sequence = after
    return stub.StreamStatusUpdates(request)


def run_watch(args: argparse.Namespace) -> int:
    """Tail updates, one line each, resuming from the last sequence after a broken stream."""
    after: int | None = args.after_sequence
    backoff = 0.5
    with channel(args) as open_channel:
        stub = pb2_grpc.MessageStatusServiceStub(open_channel)
        while True:
            try:
                for item in _stream(stub, args, after):
                    backoff = 0.5
                    kind = item.WhichOneof("item")
                    if kind == "progress":
                        after = max(after or 0, item.progress.sequence)
                        continue
                    entry = getattr(item, kind)
                    after = entry.sequence
                    if args.json:
                        print(json.dumps(MessageToDict(entry)), flush=True)
                    elif kind == "inbound_message":
                        print(
                            f"{entry.sequence:>8}  {entry.reference_tracking_id or '-'}  {_reply_line(entry)}",
                            flush=True,
                        )
                    else:
                        print(_status_line(entry), flush=True)
            except grpc.RpcError as ex:
                if ex.code() not in _RETRYABLE:
                    print(f"routee-callbacks: error: {ex.code().name}: {ex.details()}", file=sys.stderr)
                    return 1
                print(f"stream broken ({ex.code().name}); resuming after {after}", file=sys.stderr, flush=True)
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            except KeyboardInterrupt:
                return 0


def run_campaign(args: argparse.Namespace) -> int:
    """Print a campaign's summary, or walk its messages page by page; exit 1 when it is unknown or the server
    fails."""
    with channel(args) as open_channel:
        stub = pb2_grpc.MessageStatusServiceStub(open_channel)
        try:
            if args.list:
                _list_campaign(stub, args)
            else:
                _print_summary(
                    stub.GetCampaignSummary(
                        pb2.GetCampaignSummaryRequest(campaign_tracking_id=args.campaign_tracking_id), timeout=10
                    ),
                    as_json=args.json,
                )
        except grpc.RpcError as ex:
            print(f"routee-callbacks: error: {ex.code().name}: {ex.details()}", file=sys.stderr)
            return 1
    return 0


def _print_summary(summary: pb2.GetCampaignSummaryResponse, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(MessageToDict(summary, always_print_fields_with_no_presence=True), indent=2))
        return
    print(
        f"campaign {summary.campaign_tracking_id}: {summary.total_messages} messages, as of sequence {summary.sequence}"
    )
    print(
        f"status changes from {summary.first_update_time.ToJsonString()} to {summary.latest_update_time.ToJsonString()}"
    )
    for count in summary.counts:
        share = 100 * count.messages / summary.total_messages if summary.total_messages else 0.0
        print(f"  {_status_name(count.status):<11} {count.messages:>10}  {share:5.1f}%")


def _list_campaign(stub: pb2_grpc.MessageStatusServiceStub, args: argparse.Namespace) -> None:
    request = pb2.ListMessageStatusesRequest(
        campaign_tracking_id=args.campaign_tracking_id, statuses=args.status, page_size=1000
    )
    while True:
        page = stub.ListMessageStatuses(request, timeout=30)
        for message in page.messages:
            if args.json:
                print(json.dumps(MessageToDict(message)), flush=True)
            else:
                callback = message.sms_callback if message.channel == pb.CHANNEL_SMS else message.callback
                reason = callback.status.reason.detailed_status
                print(
                    f"{message.tracking_id}  {_channel_name(message.channel):<5}  {_status_name(message.status):<11}"
                    f" {message.status_name:<12} {callback.status.update_time.ToJsonString()}  seq {message.sequence}"
                    + (f"  ({reason})" if reason else ""),
                    flush=True,
                )
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token
