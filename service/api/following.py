"""Following the log for one stream: the resume check, the snapshot, the replay from the store, then live
updates from the broker, in order, with no gap and no repeat; and the count of open streams within its bounds."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from routee.callbacks.v1 import message_status_service_pb2 as pb2
from service.api.broker import Broker, Subscription, Update
from service.domain.entries import EventFilter
from service.domain.errors import InvalidArgumentError, OutOfRangeError, ResourceExhaustedError, ShuttingDownError
from service.monitoring.metrics import Metrics
from service.store import LogReader

# A catching-up stream holds one page: this bounds its memory (about 1 KiB an event).
REPLAY_PAGE = 100
#: A snapshot reads and holds this many messages at a time.
SNAPSHOT_PAGE = 500


class Streams:
    """The streams open now, in all and by client, each count within its bound."""

    def __init__(self, metrics: Metrics, *, max_streams: int, max_per_client: int) -> None:
        self._metrics = metrics
        self._max_streams = max_streams
        self._max_per_client = max_per_client
        self._open = 0
        #: Open streams by client (its certificate's name, else its address); a client leaves when it has none.
        self._by_client: dict[str, int] = {}

    @contextlib.contextmanager
    def admitted(self, client: str) -> Iterator[None]:
        """Count a stream of ``client`` while the block runs; ResourceExhaustedError when a bound is reached."""
        if self._open >= self._max_streams:
            raise ResourceExhaustedError(f"the server already serves {self._max_streams} streams; retry later")
        if self._by_client.get(client, 0) >= self._max_per_client:
            raise ResourceExhaustedError(
                f"this client ({client}) already has {self._max_per_client} streams open; close one or retry later"
            )
        self._open += 1
        self._by_client[client] = self._by_client.get(client, 0) + 1
        self._metrics.subscribers.inc()
        try:
            yield
        finally:
            self._open -= 1
            if (left := self._by_client[client] - 1) == 0:
                del self._by_client[client]
            else:
                self._by_client[client] = left
            self._metrics.subscribers.dec()


class Follower:
    """Follows the log for streams: what the store holds first when asked, then what the broker publishes."""

    def __init__(self, store: LogReader, broker: Broker, metrics: Metrics, *, progress_interval: float) -> None:
        self._store = store
        self._broker = broker
        self._metrics = metrics
        self._progress_interval = progress_interval

    async def follow(
        self,
        event_filter: EventFilter,
        after_sequence: int | None,
        progress: Callable[[int], bytes],
        *,
        snapshot: bool = False,
        subscribed: Callable[[], Awaitable[None]],
    ) -> AsyncIterator[bytes]:
        """The serialized items of the filter: those after ``after_sequence`` (or a snapshot) first, then live, in
        order; ``subscribed`` is awaited once the live updates are held for the stream. Raises
        ShuttingDownError with the sequence to resume after."""
        subscription = self._broker.subscribe(event_filter)
        position = subscription.start_sequence
        try:
            await subscribed()
            if after_sequence is not None:
                await self._check_resumable(event_filter, after_sequence)
                position = after_sequence
            elif snapshot:
                async for item in self._snapshot(event_filter, position):
                    yield item
            catch_up = after_sequence is not None
            while True:
                if catch_up:
                    async for update in self._replay(event_filter, position):
                        yield update.payload
                        position = update.sequence
                batch = await subscription.next_batch(self._progress_interval)
                if batch is None:  # Lagged: subscribe again first, so the replay leaves no gap.
                    subscription = self._resubscribe(subscription, event_filter)
                    catch_up = True
                    continue
                catch_up = False
                if not batch:
                    position = max(position, self._broker.last_sequence)
                    yield progress(position)
                    continue
                for update in batch:
                    if update.sequence > position:
                        yield update.payload
                        position = update.sequence
                self._metrics.updates_streamed.inc(len(batch))
        except ShuttingDownError:
            raise ShuttingDownError(f"the server is shutting down; resume with after_sequence={position}") from None
        finally:
            self._broker.unsubscribe(subscription)

    async def _check_resumable(self, event_filter: EventFilter, after_sequence: int) -> None:
        last = await self._store.last_sequence()
        if after_sequence > last:
            raise InvalidArgumentError(f"after_sequence {after_sequence} is beyond the last stored sequence {last}")
        pruned = await self._store.pruned_through()
        if after_sequence < pruned:
            raise OutOfRangeError(
                f"entries after sequence {after_sequence} are no longer all kept; the oldest resume point is"
                f" after_sequence={pruned}"
                + (": take a snapshot (include_snapshot) instead" if not event_filter.inbound else "")
            )

    async def _snapshot(self, event_filter: EventFilter, as_of: int) -> AsyncIterator[bytes]:
        """Every current status of the filter as of the subscription's start, then the marker: every update after
        it comes live (or is caught up from the store should the stream fall behind meanwhile), so snapshot and
        live meet with no gap and no repeat. One page at a time: the stream's memory does not grow with the
        campaign, and a cancelled call reads no further page."""
        after = ""
        while page := await self._store.snapshot_page(event_filter, as_of, after, SNAPSHOT_PAGE):
            for event in page:
                yield Update(event).payload
            after = page[-1].tracking_id
            if len(page) < SNAPSHOT_PAGE:
                break
        yield pb2.StreamStatusUpdatesResponse(snapshot_end=pb2.SnapshotEnd(sequence=as_of)).SerializeToString()

    async def _replay(self, event_filter: EventFilter, after_sequence: int) -> AsyncIterator[Update]:
        """What the store holds after ``after_sequence``, a page at a time."""
        self._metrics.catching_up.inc()
        try:
            while True:
                entries = await self._store.events_after(after_sequence, event_filter, REPLAY_PAGE)
                for entry in entries:
                    yield Update(entry)
                if len(entries) < REPLAY_PAGE:
                    return
                after_sequence = entries[-1].sequence
        finally:
            self._metrics.catching_up.dec()

    def _resubscribe(self, subscription: Subscription, event_filter: EventFilter) -> Subscription:
        self._broker.unsubscribe(subscription)
        self._metrics.catch_ups.inc()
        return self._broker.subscribe(event_filter)
