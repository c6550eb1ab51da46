"""The write transaction's algorithm, once for both engines: read what the plan needs, plan, write, then run
every other job of the batch, in a ``Session`` the engine opened (and will commit)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.rules import FULL, EventKey, check_from, event_key, inbound_key, sms_event_key
from service.routee.privacy import minimise_callback, minimise_reply
from service.store import (
    AppendInbound,
    AppendStatus,
    DropQuarantined,
    Erase,
    Job,
    Probe,
    PruneChunk,
    Quarantine,
    Release,
    Reschedule,
    WriteResult,
    erasure,
    maintenance,
)
from service.store.plan import (
    Current,
    InboundPlan,
    NewEvent,
    PartCurrent,
    Parts,
    StatusPlan,
    appends,
    plan_inbound,
    plan_status,
)
from service.store.sql import Cursor, Insert, Session, add_counts, set_meta

_EVENTS = Insert(
    "events",
    (
        ("sequence", "int8"),
        ("tracking_id", "text"),
        ("campaign_tracking_id", "text"),
        ("status_key", "text"),
        ("status", "int2"),
        ("status_name", "text"),
        ("rank", "int2"),
        ("update_us", "int8"),
        ("receive_us", "int8"),
        ("was_current", "bool"),
        ("callback", "bytes"),
        ("previous_status", "int2"),
        ("source", "int2"),
        ("channel", "int2"),
        ("part", "int2"),
        ("message_status", "int2"),
    ),
)
_MESSAGES = Insert(
    "messages",
    (
        ("tracking_id", "text"),
        ("campaign_tracking_id", "text"),
        ("current_sequence", "int8"),
        ("update_us", "int8"),
        ("rank", "int2"),
        ("status", "int2"),
        ("check_from_us", "int8"),
        ("channel", "int2"),
    ),
    " ON CONFLICT (tracking_id) DO UPDATE SET campaign_tracking_id = excluded.campaign_tracking_id,"
    " current_sequence = excluded.current_sequence, update_us = excluded.update_us, rank = excluded.rank,"
    " status = excluded.status, check_from_us = excluded.check_from_us, checks = 0",
)
_CAMPAIGNS = Insert(
    "campaigns",
    (("campaign_tracking_id", "text"), ("first_update_us", "int8"), ("latest_update_us", "int8")),
    " ON CONFLICT (campaign_tracking_id) DO UPDATE SET"
    " first_update_us = CASE WHEN excluded.first_update_us < campaigns.first_update_us"
    " THEN excluded.first_update_us ELSE campaigns.first_update_us END,"
    " latest_update_us = CASE WHEN excluded.latest_update_us > campaigns.latest_update_us"
    " THEN excluded.latest_update_us ELSE campaigns.latest_update_us END",
)
_INBOUND = Insert(
    "inbound",
    (
        ("sequence", "int8"),
        ("content_key", "text"),
        ("campaign_tracking_id", "text"),
        ("reference_tracking_id", "text"),
        ("receive_us", "int8"),
        ("message", "bytes"),
        ("channel", "int2"),
    ),
)
_SMS_PARTS = Insert(
    "sms_parts",
    (
        ("tracking_id", "text"),
        ("part", "int2"),
        ("parts", "int2"),
        ("sms_id", "text"),
        ("status", "int2"),
        ("status_name", "text"),
        ("update_us", "int8"),
        ("rank", "int2"),
        ("current_sequence", "int8"),
    ),
    " ON CONFLICT (tracking_id, part) DO UPDATE SET parts = excluded.parts, sms_id = excluded.sms_id,"
    " status = excluded.status, status_name = excluded.status_name, update_us = excluded.update_us,"
    " rank = excluded.rank, current_sequence = excluded.current_sequence",
)
_KEY_COLUMNS = (("tracking_id", "text"), ("status_key", "text"), ("update_us", "int8"))


async def run(session: Session, jobs: Sequence[Job], now_us: int, personal_data: str = FULL) -> WriteResult:
    """Run a batch of jobs in the session's transaction: a result per job, in job order, and the new entries;
    what is stored keeps only the personal data ``personal_data`` allows (``service.routee.privacy``)."""
    plan, inbound = await _append(session, jobs, now_us, personal_data)
    result = WriteResult(entries=[new.event for new in plan.events] + [new.entry for new in inbound.entries])
    statuses, replies = iter(plan.results), iter(inbound.results)
    for job in jobs:
        if isinstance(job, AppendStatus):
            result.results.append(next(statuses))
        elif isinstance(job, AppendInbound):
            result.results.append(next(replies))
        elif isinstance(job, Release):
            result.results.append(next(statuses if isinstance(job.append, AppendStatus) else replies))
            await maintenance.drop_quarantined(session, DropQuarantined(ids=(job.quarantine_id,)))
        else:
            result.results.append(await _run_other(session, job, now_us, personal_data))
    return result


async def _run_other(session: Session, job: Job, now_us: int, personal_data: str) -> object:
    if isinstance(job, Quarantine):
        return await maintenance.quarantine(session, job, now_us, personal_data)
    if isinstance(job, DropQuarantined):
        return await maintenance.drop_quarantined(session, job)
    if isinstance(job, Reschedule):
        cursor = await session.execute(
            "UPDATE messages SET check_from_us = %s, checks = checks + 1 WHERE tracking_id = %s"
            " AND current_sequence = %s",
            (job.check_from_us, job.tracking_id, job.current_sequence),
        )
        return cursor.rowcount == 1
    if isinstance(job, Probe):
        await set_meta(session, "probed_at_us", now_us)
        return None
    if isinstance(job, PruneChunk):
        return await maintenance.prune_chunk(session, job)
    if isinstance(job, Erase):
        return await erasure.erase(session, job)
    raise TypeError(f"no such job: {job!r}")


# -- appending to the log -----------------------------------------------------------------------------------------


async def _append(
    session: Session, jobs: Sequence[Job], receive_us: int, personal_data: str
) -> tuple[StatusPlan, InboundPlan]:
    """Plan and write the batch's new entries, their sequences after the log's head (locked until commit)."""
    appended, messages = appends(jobs)
    if not appended and not messages:
        return StatusPlan(), InboundPlan()
    callbacks = [append.callback for append in appended]
    keys, sms_ids = _keys(callbacks)
    content_keys = [inbound_key(message) for message in messages]
    _minimise(callbacks, messages, personal_data)  # After the keys: a retry is still recognised by what it was.
    # The log's lock first, then the reads (each sees what committed before it started); all sent before the
    # first answer is awaited, so that PostgreSQL's pipeline waits once.
    dialect = session.dialect
    head = await session.execute(f"SELECT value FROM meta WHERE key = 'last_sequence'{dialect.lock_head}")
    stored = current_rows = inbound_rows = part_rows = None
    if keys:
        stored, current_rows = await _stored_keys(session, keys), await _current(session, keys)
    if sms_ids:
        part_rows = await _parts(session, sms_ids)
    if content_keys:
        condition, params = dialect.any_of("content_key", content_keys)
        inbound_rows = await session.execute(f"SELECT content_key FROM inbound WHERE {condition}", params)
    row = await head.fetchone()
    existing: set[EventKey] = {(row[0], row[1], row[2]) for row in await _rows(stored)}
    current = {row[0]: Current(row[1], row[2], row[3], row[4], row[5]) for row in await _rows(current_rows)}
    plan = plan_status(
        callbacks,
        keys,
        existing=existing,
        current=current,
        last_sequence=int(row[0]) if row else 0,
        receive_us=receive_us,
        sources=[append.source for append in appended],
        parts=_stored_parts(await _rows(part_rows)),
    )
    inbound = plan_inbound(
        messages,
        content_keys,
        existing={row[0] for row in await _rows(inbound_rows)},
        last_sequence=plan.last_sequence,
        receive_us=receive_us,
    )
    await _write_status(session, plan, receive_us)
    await _write_inbound(session, inbound)
    if plan.events or inbound.entries:
        await set_meta(session, "last_sequence", inbound.last_sequence)
    return plan, inbound


def _keys(callbacks: Sequence[pb.ViberCallback | pb.SmsCallback]) -> tuple[list[EventKey], list[str]]:
    """Each callback's event key, and the tracking ids of the SMS among them."""
    keys: list[EventKey] = []
    sms_ids: set[str] = set()
    for callback in callbacks:
        if isinstance(callback, pb.SmsCallback):
            keys.append(sms_event_key(callback))
            sms_ids.add(callback.message_id)
        else:
            keys.append(event_key(callback))
    return keys, sorted(sms_ids)


def _minimise(
    callbacks: Sequence[pb.ViberCallback | pb.SmsCallback], messages: Sequence[pb.InboundMessage], mode: str
) -> None:
    """Keep of each callback and reply only the personal data ``mode`` allows, in place."""
    if mode != FULL:
        for callback in callbacks:
            minimise_callback(callback, mode)
        for message in messages:
            minimise_reply(message, mode)


async def _rows(cursor: Cursor | None) -> list[Any]:
    return await cursor.fetchall() if cursor is not None else []


async def _current(session: Session, keys: Sequence[EventKey]) -> Cursor:
    """The current status of each message of the batch that has one."""
    condition, params = session.dialect.any_of("tracking_id", sorted({key[0] for key in keys}))
    return await session.execute(
        "SELECT tracking_id, campaign_tracking_id, status, update_us, rank, current_sequence FROM messages"
        f" WHERE {condition}",
        params,
    )


async def _parts(session: Session, tracking_ids: Sequence[str]) -> Cursor:
    """The current status of each part of the batch's SMS."""
    condition, params = session.dialect.any_of("tracking_id", tracking_ids)
    return await session.execute(
        f"SELECT tracking_id, part, status, update_us, rank, current_sequence, parts FROM sms_parts WHERE {condition}",
        params,
    )


def _stored_parts(rows: Sequence[Any]) -> dict[str, Parts]:
    parts: dict[str, Parts] = {}
    for tracking_id, part, status, update_us, rank, sequence, count in rows:
        parts.setdefault(tracking_id, {})[part] = PartCurrent(status, update_us, rank, sequence, count)
    return parts


async def _stored_keys(session: Session, keys: Sequence[EventKey]) -> Cursor:
    """Which of the keys are stored already: one lookup through the unique index per key."""
    rows, params = session.dialect.literal_rows(_KEY_COLUMNS, keys)
    return await session.execute(
        f"WITH batch (tracking_id, status_key, update_us) AS ({rows})"
        " SELECT e.tracking_id, e.status_key, e.update_us FROM batch CROSS JOIN events e"
        " WHERE e.tracking_id = batch.tracking_id AND e.status_key = batch.status_key"
        " AND e.update_us = batch.update_us",
        params,
    )


def _event_row(new: NewEvent) -> tuple[object, ...]:
    """The row of ``_EVENTS`` of a new event."""
    event = new.event
    return (
        event.sequence,
        event.tracking_id,
        event.campaign_tracking_id,
        new.status_key,
        event.status,
        event.status_name,
        new.rank,
        event.update_us,
        event.receive_us,
        event.is_current,
        event.callback,
        event.previous_status,
        event.source,
        event.channel,
        event.part,
        event.message_status,
    )


async def _write_status(session: Session, plan: StatusPlan, receive_us: int) -> None:
    if not plan.events:
        return
    await session.insert(_EVENTS, [_event_row(new) for new in plan.events])
    await session.insert(
        _MESSAGES,
        [
            (
                tracking_id,
                now.campaign_tracking_id,
                now.sequence,
                now.update_us,
                now.rank,
                now.status,
                check_from(now.status, receive_us),
                now.channel,
            )
            for tracking_id, now in plan.messages.items()
        ],
    )
    if plan.parts:
        await session.insert(
            _SMS_PARTS,
            [
                (
                    tracking_id,
                    part,
                    now.parts,
                    now.sms_id,
                    now.status,
                    now.status_name,
                    now.update_us,
                    now.rank,
                    now.sequence,
                )
                for (tracking_id, part), now in sorted(plan.parts.items())
            ],
        )
    await add_counts(session, plan.counts)
    await session.insert(
        _CAMPAIGNS, [(campaign, first, latest) for campaign, (first, latest) in plan.campaign_times.items()]
    )


async def _write_inbound(session: Session, inbound: InboundPlan) -> None:
    if inbound.entries:
        await session.insert(
            _INBOUND,
            [
                (
                    new.entry.sequence,
                    new.key,
                    new.entry.campaign_tracking_id,
                    new.entry.reference_tracking_id,
                    new.entry.receive_us,
                    new.entry.message,
                    new.entry.channel,
                )
                for new in inbound.entries
            ],
        )
