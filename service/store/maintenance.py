"""The store's upkeep, once for both engines: the quarantine kept within its bounds, and retention (old entries
pruned, and the current statuses that pointed at them repaired)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from service.domain.rules import FULL, INBOUND_KINDS, SMS
from service.routee.privacy import minimise_body
from service.store import DropQuarantined, PruneChunk, Quarantine, body_digest, oldest_beyond, quarantine_cost
from service.store.sql import Session, add_counts, meta, order_by, scalar, set_meta

# -- the quarantine -----------------------------------------------------------------------------------------------


async def quarantine(session: Session, job: Quarantine, now_us: int, personal_data: str = FULL) -> int:
    """Keep a refused body (what ``personal_data`` allows of it), or count another attempt of one kept; then keep
    the whole within its bound."""
    job = replace(job, body=minimise_body(job.body, personal_data, reply=job.kind in INBOUND_KINDS))
    digest = body_digest(job.body)
    row = _first(
        await session.rows(
            "UPDATE quarantine SET attempts = attempts + 1, last_us = %s, peer = %s, status = %s, reason = %s,"
            " detail = %s WHERE body_hash = %s RETURNING id",
            (now_us, job.peer, job.status, job.reason, job.detail, digest),
        )
    )
    if row is not None:
        return int(row[0])
    cost = quarantine_cost(job)
    inserted = _first(
        await session.rows(
            "INSERT INTO quarantine (body_hash, received_us, last_us, peer, status, reason, detail, attempts, size,"
            " body, kind) VALUES (%s, %s, %s, %s, %s, %s, %s, 1, %s, %s, %s) RETURNING id",
            (digest, now_us, now_us, job.peer, job.status, job.reason, job.detail, cost, job.body, job.kind),
        )
    )
    total = await meta(session, "quarantine_bytes") + cost
    surplus = await scalar(session, "SELECT count(*) FROM quarantine") - job.max_entries
    if total > job.max_bytes or surplus > 0:
        oldest = [
            (int(row[0]), int(row[1]))
            for row in await session.rows("SELECT id, size FROM quarantine ORDER BY last_us, id LIMIT 1000")
        ]
        doomed = oldest_beyond(oldest, total - job.max_bytes, surplus)
        condition, params = session.dialect.any_of("id", doomed)
        await session.execute(f"DELETE FROM quarantine WHERE {condition}", params)
        total -= sum(size for id_, size in oldest if id_ in doomed)
    await set_meta(session, "quarantine_bytes", total)
    return int(inserted[0])


async def drop_quarantined(session: Session, job: DropQuarantined) -> int:
    condition, params = "true", ()  # type: tuple[str, tuple[object, ...]]
    if job.ids is not None:
        condition, params = session.dialect.any_of("id", job.ids)
    elif job.seen_before_us is not None:
        condition, params = "last_us < %s", (job.seen_before_us,)
    freed = await session.rows(f"DELETE FROM quarantine WHERE {condition} RETURNING size", params)
    if freed:
        await session.execute(
            "UPDATE meta SET value = CASE WHEN value > %s THEN value - %s ELSE 0 END WHERE key = 'quarantine_bytes'",
            (freed_bytes := sum(int(row[0]) for row in freed), freed_bytes),
        )
    return len(freed)


# -- retention ----------------------------------------------------------------------------------------------------


async def prune_chunk(session: Session, job: PruneChunk) -> int:
    """Run one ``PruneChunk`` and repair what pointed at what it deleted; one instance at a time. The result is
    how many entries and campaigns went."""
    cutoff_us, chunk = job.cutoff_us, job.limit
    dialect = session.dialect
    if dialect.prune_lock is not None:
        row = _first(await session.rows(dialect.prune_lock))
        if not row or not row[0]:
            return 0  # Another instance is pruning now.
    deleted = await session.rows(
        "DELETE FROM events WHERE sequence IN"
        " (SELECT sequence FROM events WHERE receive_us < %s ORDER BY sequence LIMIT %s)"
        " RETURNING sequence, tracking_id",
        (cutoff_us, chunk),
    )
    replies = await session.rows(
        "DELETE FROM inbound WHERE sequence IN"
        " (SELECT sequence FROM inbound WHERE receive_us < %s ORDER BY sequence LIMIT %s) RETURNING sequence",
        (cutoff_us if job.replies_cutoff_us is None else job.replies_cutoff_us, chunk),
    )
    campaigns = 0
    if job.campaigns_cutoff_us is not None:
        campaigns = await _prune_campaigns(session, job.campaigns_cutoff_us, chunk)
    if not deleted and not replies:
        return campaigns
    await session.execute(
        "INSERT INTO meta (key, value) VALUES ('pruned_through', %s)"
        " ON CONFLICT (key) DO UPDATE SET value = CASE WHEN excluded.value > meta.value THEN excluded.value"
        " ELSE meta.value END",
        (max(int(row[0]) for row in [*deleted, *replies]),),
    )
    await _repair_current(session, sorted({row[1] for row in deleted}))
    return len(deleted) + len(replies) + campaigns


async def _prune_campaigns(session: Session, cutoff_us: int, chunk: int) -> int:
    """Delete the summaries of campaigns with no message left whose latest update is before the cutoff."""
    gone = await session.rows(
        "DELETE FROM campaigns WHERE campaign_tracking_id IN (SELECT c.campaign_tracking_id FROM campaigns c"
        " WHERE c.latest_update_us < %s AND NOT EXISTS (SELECT 1 FROM messages m"
        " WHERE m.campaign_tracking_id = c.campaign_tracking_id) LIMIT %s) RETURNING campaign_tracking_id",
        (cutoff_us, chunk),
    )
    if gone:
        condition, params = session.dialect.any_of("campaign_tracking_id", [row[0] for row in gone])
        await session.execute(f"DELETE FROM campaign_counts WHERE {condition}", params)
    return len(gone)


async def _repair_current(session: Session, tracking_ids: Sequence[str]) -> None:
    """A message whose current event was pruned takes its best remaining event as current (an SMS: its last, with
    the status it left the message in), or is forgotten with its parts; the campaign counts follow."""
    condition, params = session.dialect.any_of("m.tracking_id", tracking_ids)
    orphaned = await session.rows(
        f"DELETE FROM messages AS m WHERE {condition}"
        " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.sequence = m.current_sequence)"
        " RETURNING tracking_id, campaign_tracking_id, status",
        params,
    )
    if not orphaned:
        return
    counts: dict[tuple[str, int], int] = {}
    for _, campaign, status in orphaned:
        counts[(campaign, status)] = counts.get((campaign, status), 0) - 1
    condition, params = session.dialect.any_of("tracking_id", [row[0] for row in orphaned])
    for campaign, status in await session.rows(
        "INSERT INTO messages (tracking_id, campaign_tracking_id, current_sequence, update_us, rank, status, channel)"
        " SELECT tracking_id, campaign_tracking_id, sequence, update_us, rank, status, channel FROM (SELECT"
        " tracking_id, campaign_tracking_id, sequence, update_us, rank, channel,"
        f" CASE WHEN channel = {SMS} THEN message_status ELSE status END AS status,"
        f" ROW_NUMBER() OVER (PARTITION BY tracking_id ORDER BY CASE WHEN channel = {SMS} THEN sequence ELSE 0 END"
        f" DESC, {order_by(descending=True)}) AS best FROM events WHERE {condition}) AS ranked WHERE best = 1"
        " RETURNING campaign_tracking_id, status",
        params,
    ):
        counts[(campaign, status)] = counts.get((campaign, status), 0) + 1
    await add_counts(session, {key: delta for key, delta in counts.items() if delta})
    condition, params = session.dialect.any_of("tracking_id", [row[0] for row in orphaned])
    await session.execute(
        f"DELETE FROM sms_parts WHERE {condition}"
        " AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.tracking_id = sms_parts.tracking_id)",
        params,
    )


def _first(rows: list[Any]) -> Any:
    """The first row of a query's answer (None when it has none)."""
    return rows[0] if rows else None
