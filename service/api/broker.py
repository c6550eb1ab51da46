"""The in-process broker: fans committed entries (status events, inbound messages) out to stream subscribers.

Policy for a full queue: each subscription buffers at most ``queue_size``
updates. When one more arrives, the subscription is marked *lagged* and its
buffer is dropped; the stream then catches up from the store from the last
sequence it sent (the store holds everything the buffer held) and continues
live. Publishing therefore never blocks, never waits for a subscriber, and no
subscriber silently misses an update.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence

from service.api.convert import inbound_stream_item, stream_item
from service.domain.entries import Entry, EventFilter, StoredEvent
from service.domain.errors import ShuttingDownError, UnavailableError

_LOGGER = logging.getLogger("service.broker")


class Update:
    """One committed entry as the broker fans it out; its stream item is serialized once, when first needed."""

    __slots__ = ("_payload", "campaign_tracking_id", "channel", "entry", "inbound", "sequence", "status")

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        # Copied for the fan-out loop, which reads them for every subscription.
        self.sequence = entry.sequence
        self.campaign_tracking_id = entry.campaign_tracking_id
        self.channel = entry.channel
        if isinstance(entry, StoredEvent):
            self.status, self.inbound = entry.status, False
        else:
            self.status, self.inbound = 0, True
        self._payload: bytes | None = None

    @property
    def payload(self) -> bytes:
        """The entry as a serialized stream item (StreamStatusUpdatesResponse or StreamInboundMessagesResponse)."""
        if self._payload is None:
            entry = self.entry
            self._payload = stream_item(entry) if isinstance(entry, StoredEvent) else inbound_stream_item(entry)
        return self._payload


class Subscription:
    """One subscriber's bounded buffer of updates."""

    def __init__(self, event_filter: EventFilter, queue_size: int, start_sequence: int) -> None:
        self.event_filter = event_filter
        #: Every update with a sequence up to this one was published before the
        #: subscription existed; everything later that passes the filter is offered.
        self.start_sequence = start_sequence
        self._queue_size = queue_size
        self._items: deque[Update] = deque()
        self._lagged = False
        self._closed = False
        self._wakeup: asyncio.Future[None] | None = None

    def offer(self, update: Update) -> None:
        """Buffer an update without ever blocking; mark the subscription lagged when full."""
        if self._lagged or self._closed:
            return
        if len(self._items) >= self._queue_size:
            self._lagged = True
            self._items.clear()  # The store has them; the stream catches up from there.
        else:
            self._items.append(update)
        self._wake()

    def close(self) -> None:
        """End the subscription; a waiting reader gets ShuttingDownError."""
        self._closed = True
        self._wake()

    async def next_batch(self, idle_seconds: float) -> list[Update] | None:
        """Wait up to ``idle_seconds`` for updates and take them all.

        Returns the buffered updates in sequence order (empty after a timeout),
        or None when the subscription lagged and the caller must catch up from
        the store and subscribe again. Raises ShuttingDownError once closed.
        """
        if not (self._items or self._lagged or self._closed):
            # One future and one timer per wait: with thousands of subscribers woken by every publish,
            # asyncio.wait_for's extra task and futures were the cost that mattered.
            loop = asyncio.get_running_loop()
            self._wakeup = loop.create_future()
            timer = loop.call_later(idle_seconds, self._wake)
            try:
                await self._wakeup
            finally:
                timer.cancel()
                self._wakeup = None
        if self._closed:
            raise ShuttingDownError("the server is shutting down")
        if self._lagged:
            return None
        batch = list(self._items)
        self._items.clear()
        return batch

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)


class _Index:
    """The subscriptions to one kind of entry, by campaign."""

    __slots__ = ("by_campaign", "every_campaign")

    def __init__(self) -> None:
        self.by_campaign: dict[str, set[Subscription]] = {}
        self.every_campaign: set[Subscription] = set()

    def __len__(self) -> int:
        return len(self.every_campaign) + sum(len(subs) for subs in self.by_campaign.values())

    def all(self) -> list[Subscription]:
        return [*self.every_campaign, *(s for subs in self.by_campaign.values() for s in subs)]


class Broker:
    """Fans published entries out to subscriptions, indexed by kind and campaign."""

    def __init__(self, queue_size: int = 1024, *, following: bool = True) -> None:
        self._queue_size = queue_size
        self._status = _Index()
        self._inbound = _Index()
        self._closed = False
        #: Whether the log is followed, so that what is published continues ``last_sequence`` (a worker's broker
        #: is not until its store first answers: a subscription taken earlier could miss an entry).
        self._following = following
        #: The greatest sequence published so far.
        self.last_sequence = 0

    def follow_from(self, sequence: int) -> None:
        """Take subscriptions from now on: the log is followed, and everything up to ``sequence`` is committed."""
        self.last_sequence = max(self.last_sequence, sequence)
        self._following = True

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open."""
        return len(self._status) + len(self._inbound)

    def subscribe(self, event_filter: EventFilter) -> Subscription:
        """Register a subscription; it receives every update published from now on that passes the filter."""
        if self._closed:
            raise ShuttingDownError("the server is shutting down")
        if not self._following:
            raise UnavailableError("the server is starting: it cannot read the store yet; retry")
        subscription = Subscription(event_filter, self._queue_size, self.last_sequence)
        index = self._inbound if event_filter.inbound else self._status
        if event_filter.campaign_tracking_id is None:
            index.every_campaign.add(subscription)
        else:
            index.by_campaign.setdefault(event_filter.campaign_tracking_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Remove a subscription; removing it twice is harmless."""
        index = self._inbound if subscription.event_filter.inbound else self._status
        campaign = subscription.event_filter.campaign_tracking_id
        if campaign is None:
            index.every_campaign.discard(subscription)
            return
        subscribers = index.by_campaign.get(campaign)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del index.by_campaign[campaign]

    def publish(self, entries: Sequence[Entry]) -> None:
        """Offer committed entries, in sequence order, to every matching subscription; never blocks."""
        for entry in entries:
            update = Update(entry)
            index = self._inbound if update.inbound else self._status
            for subscribers in (index.every_campaign, index.by_campaign.get(update.campaign_tracking_id, ())):
                for subscription in subscribers:
                    wanted = subscription.event_filter
                    if (not wanted.statuses or update.status in wanted.statuses) and (
                        not wanted.channels or update.channel in wanted.channels
                    ):
                        subscription.offer(update)
            self.last_sequence = update.sequence

    def advance(self, sequence: int) -> None:
        """Note that everything up to ``sequence`` was committed with nobody to offer it to."""
        self.last_sequence = max(self.last_sequence, sequence)

    def close(self) -> None:
        """Close every subscription and refuse new ones."""
        self._closed = True
        for subscription in [*self._status.all(), *self._inbound.all()]:
            subscription.close()
