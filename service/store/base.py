"""What every engine shares (as Django's ``db/backends/base/``): the reading face, and the write of a batch, over
the engine's sessions. An engine subclasses ``SqlStore`` and supplies only what differs: how it connects, how a
transaction begins and ends (``_transaction``, ``_read``), how it waits for others' commits, and its dialect."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from service.domain.entries import (
    CampaignSummary,
    DueCheck,
    Entry,
    EventFilter,
    MessageState,
    PartState,
    StoredEvent,
    StoredInbound,
)
from service.domain.limits import MAX_EVENTS_PER_MESSAGE, MAX_REPLIES_PER_MESSAGE
from service.domain.rules import FULL, SMS
from service.store import Job, Quarantined, WriteResult, bounded, merge_entries, with_latest, writes
from service.store import sql as q
from service.store.sql import Session

_T = TypeVar("_T")
#: A read: what it does with a session (in one read-only transaction, one snapshot).
Work = Callable[[Session], Coroutine[Any, Any, _T]]


class SqlStore:
    """The store's algorithm, over an engine's sessions; see ``service.store`` for the contract."""

    #: What of the personal data in callbacks is stored (``service.routee.privacy``); engines set it.
    personal_data = FULL

    def _transaction(self) -> AbstractAsyncContextManager[Session]:
        """A write transaction: committed when the block ends, rolled back when it raises (driver errors mapped
        to the service's)."""
        raise NotImplementedError

    async def _read(self, work: Work[_T], *, inline: bool = False) -> _T:
        """Run ``work`` in one read-only transaction; ``inline`` when it reads a few rows through an index (an
        engine may then skip a hand-off to another thread)."""
        raise NotImplementedError

    async def _appended(self, session: Session, head: int) -> None:
        """Called in a write transaction that appended entries, ``head`` the last, before it commits."""

    def _committed(self, result: WriteResult) -> None:
        """Called after each commit of this store's own writes."""

    # -- the writing face ---------------------------------------------------------------------------------------

    async def write(self, jobs: Sequence[Job], now_us: int) -> WriteResult:
        """Run the jobs in one transaction and commit; roll back and re-raise on any failure."""
        async with self._transaction() as session:
            result = await writes.run(session, jobs, now_us, self.personal_data)
            if result.entries:
                await self._appended(session, result.entries[-1].sequence)
        self._committed(result)
        return result

    async def head(self) -> int:
        """Return the greatest sequence committed by anyone (0 when none)."""
        return await self._read(lambda session: q.meta(session, "last_sequence"))

    # -- the reading face ---------------------------------------------------------------------------------------

    async def entries_after(self, after_sequence: int, limit: int) -> list[Entry]:
        """Return up to ``limit`` committed entries of both kinds after ``after_sequence``, in order."""

        async def read(session: Session) -> list[Entry]:
            params = (after_sequence, limit)
            events = await session.execute(
                f"SELECT {q.EVENT_COLUMNS} FROM events WHERE sequence > %s ORDER BY sequence LIMIT %s", params
            )
            inbound = await session.execute(
                f"SELECT {q.INBOUND_COLUMNS} FROM inbound WHERE sequence > %s ORDER BY sequence LIMIT %s", params
            )
            return merge_entries(
                [q.event(row) for row in await events.fetchall()],
                [q.inbound(row) for row in await inbound.fetchall()],
                limit,
            )

        return await self._read(read)

    async def history(self, tracking_id: str) -> list[StoredEvent]:
        """Return every event of a message, in precedence order (its current status last)."""

        async def read(session: Session) -> list[StoredEvent]:
            return [q.event(row) for row in await session.rows(q.HISTORY, (tracking_id,))]

        return await self._read(read, inline=True)

    async def replies(self, tracking_id: str) -> list[StoredInbound]:
        """Return the inbound messages that answer a message, oldest first."""

        async def read(session: Session) -> list[StoredInbound]:
            return [q.inbound(row) for row in await session.rows(q.REPLIES, (tracking_id,))]

        return await self._read(read, inline=True)

    async def message(self, tracking_id: str) -> MessageState | None:
        """Return a message's latest events and replies with their totals, read together (None when it has no
        event); a Viber message's current status is the last of its events in precedence order, an SMS's the
        event its row names, with each part's current event."""
        key = (tracking_id,)

        async def read(session: Session) -> MessageState | None:
            events = await session.rows(q.ONE_MESSAGE_EVENTS, key)
            history, more_events = bounded([q.event(row) for row in events], MAX_EVENTS_PER_MESSAGE)
            if not history:
                return None
            replies = await session.rows(q.ONE_MESSAGE_REPLIES, key)
            answers, more_replies = bounded([q.inbound(row) for row in replies], MAX_REPLIES_PER_MESSAGE)
            events_total = await q.scalar(session, q.COUNT_EVENTS, key) if more_events else len(history)
            replies_total = await q.scalar(session, q.COUNT_REPLIES, key) if more_replies else len(answers)
            state = MessageState(history[-1], history, answers, events_total, replies_total)
            if state.current.channel == SMS:
                current = await session.rows(q.CURRENT_EVENT, key)
                state.current = q.event(current[0]) if current else state.current
                await _with_parts(session, {tracking_id: state})
            return state

        return await self._read(read, inline=True)

    async def events_after(self, after_sequence: int, event_filter: EventFilter, limit: int) -> Sequence[Entry]:
        """Return up to ``limit`` entries of the filter with a sequence greater than ``after_sequence``, in order."""

        async def read(session: Session) -> Sequence[Entry]:
            conditions, params = q.where(event_filter, session.dialect)
            table, columns, build = (
                ("inbound", q.INBOUND_COLUMNS, q.inbound)
                if event_filter.inbound
                else ("events", q.EVENT_COLUMNS, q.event)
            )
            rows = await session.rows(
                f"SELECT {columns} FROM {table} WHERE sequence > %s{conditions} ORDER BY sequence LIMIT %s",
                (after_sequence, *params, limit),
            )
            return [build(row) for row in rows]

        return await self._read(read)

    async def snapshot_page(
        self, event_filter: EventFilter, as_of: int, after_tracking_id: str, limit: int
    ) -> list[StoredEvent]:
        """One page of a snapshot as of a sequence (see ``LogReader``)."""

        async def read(session: Session) -> list[StoredEvent]:
            sql, params = q.snapshot_page(session.dialect, event_filter, as_of, after_tracking_id, limit)
            return [q.event(row) for row in await session.rows(sql, params)]

        return await self._read(read)

    async def statuses(self, tracking_ids: Sequence[str], *, history: bool = False) -> dict[str, MessageState]:
        """Return the messages found among ``tracking_ids``, with their latest events and replies when asked."""

        async def read(session: Session) -> dict[str, MessageState]:
            condition, params = session.dialect.any_of("m.tracking_id", list(tracking_ids))
            rows = await session.rows(
                f"SELECT {q.event_columns('e.')} FROM messages m JOIN events e ON e.sequence = m.current_sequence"
                f" WHERE {condition}",
                params,
            )
            found = {event.tracking_id: MessageState(event, [], []) for event in map(q.event, rows)}
            if history and found:
                condition, params = session.dialect.any_of("tracking_id", list(found))
                events = await session.execute(q.latest_events(condition), params)
                condition, params = session.dialect.any_of("reference_tracking_id", list(found))
                replies = await session.execute(q.latest_replies(condition), params)
                with_latest(
                    found,
                    [(q.event(row), row[-1]) for row in await events.fetchall()],
                    [(q.inbound(row), row[-1]) for row in await replies.fetchall()],
                )
                await _with_parts(session, {key: state for key, state in found.items() if state.current.channel == SMS})
            return found

        return await self._read(read)

    async def list_messages(
        self,
        campaign_tracking_id: str,
        statuses: frozenset[int],
        after_tracking_id: str,
        limit: int,
        channels: frozenset[int] = frozenset(),
    ) -> list[StoredEvent]:
        """Return the current-status events of up to ``limit`` messages of a campaign whose current status is one
        of ``statuses`` and whose channel one of ``channels`` (all when empty), with a tracking id after
        ``after_tracking_id``, in tracking id order."""

        async def read(session: Session) -> list[StoredEvent]:
            condition, params = q.each_one_of(session.dialect, ("m.status", statuses), ("m.channel", channels))
            rows = await session.rows(
                f"SELECT {q.event_columns('e.')} FROM messages m JOIN events e ON e.sequence = m.current_sequence"
                f" WHERE m.campaign_tracking_id = %s{condition} AND m.tracking_id > %s ORDER BY m.tracking_id"
                " LIMIT %s",
                (campaign_tracking_id, *params, after_tracking_id, limit),
            )
            return [q.event(row) for row in rows]

        return await self._read(read)

    async def campaign_summary(self, campaign_tracking_id: str) -> CampaignSummary | None:
        """Return the campaign's counts by current status and the sequence they are consistent with."""

        async def read(session: Session) -> CampaignSummary | None:
            times = await session.rows(
                "SELECT first_update_us, latest_update_us FROM campaigns WHERE campaign_tracking_id = %s",
                (campaign_tracking_id,),
            )
            if not times:
                return None
            counts = await session.rows(
                "SELECT status, messages FROM campaign_counts WHERE campaign_tracking_id = %s AND messages > 0"
                " ORDER BY status",
                (campaign_tracking_id,),
            )
            head = await q.meta(session, "last_sequence")
            (first, latest) = times[0]
            return CampaignSummary({status: total for status, total in counts}, first, latest, head)

        return await self._read(read, inline=True)

    async def due_checks(self, changed_before_us: int, limit: int) -> list[DueCheck]:
        """Return up to ``limit`` messages due for reconciliation, those due longest first."""

        async def read(session: Session) -> list[DueCheck]:
            rows = await session.rows(
                f"SELECT {q.event_columns('e.')}, m.checks FROM messages m JOIN events e"
                " ON e.sequence = m.current_sequence"
                " WHERE m.check_from_us IS NOT NULL AND m.check_from_us < %s ORDER BY m.check_from_us LIMIT %s",
                (changed_before_us, limit),
            )
            return [DueCheck(q.event(row), row[-1]) for row in rows]

        return await self._read(read)

    async def last_sequence(self) -> int:
        """Return the greatest sequence committed (0 when none)."""
        return await self._read(lambda session: q.meta(session, "last_sequence"), inline=True)

    async def pruned_through(self) -> int:
        """Return the greatest sequence ever pruned (0 when none)."""
        return await self._read(lambda session: q.meta(session, "pruned_through"), inline=True)

    async def quarantined(self, ids: Sequence[int] | None = None) -> list[Quarantined]:
        """Return the bodies in quarantine (these ids, or all), the longest-held first."""

        async def read(session: Session) -> list[Quarantined]:
            condition, params = ("true", ()) if ids is None else session.dialect.any_of("id", list(ids))
            rows = await session.rows(
                f"SELECT {q.QUARANTINE_COLUMNS} FROM quarantine WHERE {condition} ORDER BY received_us, id", params
            )
            return [
                Quarantined(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], bytes(row[8]), row[9])
                for row in rows
            ]

        return await self._read(read)

    async def quarantine_size(self) -> tuple[int, int]:
        """Return how many bodies the quarantine holds, and their bytes."""

        async def read(session: Session) -> tuple[int, int]:
            return await q.scalar(session, "SELECT count(*) FROM quarantine"), await q.meta(session, "quarantine_bytes")

        return await self._read(read, inline=True)


async def _with_parts(session: Session, states: dict[str, MessageState]) -> None:
    """Put each SMS part's current status into the states of SMS messages, in part order (a few small rows each:
    at most MAX_SMS_PARTS, no callback read)."""
    if not states:
        return
    condition, params = session.dialect.any_of("tracking_id", list(states))
    for tracking_id, *part in await session.rows(
        "SELECT tracking_id, part, sms_id, status, status_name, update_us, current_sequence FROM sms_parts"
        f" WHERE {condition} ORDER BY tracking_id, part",
        params,
    ):
        states[tracking_id].parts.append(PartState(*part))
