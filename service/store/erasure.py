"""Erasing one person, once for both engines: their number and what they wrote, out of every stored entry and
quarantined body, a window of sequences at a time."""

from __future__ import annotations

from collections.abc import Callable

from service.domain.rules import SMS
from service.routee.privacy import erase_callback, erase_reply, mentions
from service.store import DropQuarantined, Erase, Erased
from service.store.maintenance import drop_quarantined
from service.store.sql import Session, meta, scalar

#: What a row's blob (and its channel) becomes without the number (None: it does not name it).
_Eraser = Callable[[bytes, int], bytes | None]


async def erase(session: Session, job: Erase) -> Erased:
    """Run one ``Erase``: rewrite the entries of its window that name the number, drop the bodies that hold it."""
    last = job.after_sequence + job.limit
    window = (job.after_sequence, last)
    callbacks = await _rewrite(
        session, "events", "callback", window, lambda blob, channel: erase_callback(blob, job.number, channel == SMS)
    )
    replies = await _rewrite(session, "inbound", "message", window, lambda blob, _: erase_reply(blob, job.number))
    last_id = job.after_quarantine_id + job.limit
    bodies = await session.rows(
        "SELECT id, body FROM quarantine WHERE id > %s AND id <= %s", (job.after_quarantine_id, last_id)
    )
    doomed = tuple(int(row[0]) for row in bodies if mentions(bytes(row[1]), job.number))
    quarantined = await drop_quarantined(session, DropQuarantined(ids=doomed)) if doomed else 0
    highest_id = await scalar(session, "SELECT coalesce(max(id), 0) FROM quarantine")
    done = last >= await meta(session, "last_sequence") and last_id >= highest_id
    return Erased(callbacks, replies, quarantined, done)


async def _rewrite(session: Session, table: str, column: str, window: tuple[int, int], erased: _Eraser) -> int:
    """Rewrite the rows of ``table`` in the window whose ``column`` names the number; how many."""
    changed = 0
    for sequence, blob, channel in await session.rows(
        f"SELECT sequence, {column}, channel FROM {table} WHERE sequence > %s AND sequence <= %s", window
    ):
        if (replacement := erased(bytes(blob), channel)) is not None:
            await session.execute(f"UPDATE {table} SET {column} = %s WHERE sequence = %s", (replacement, sequence))
            changed += 1
    return changed
