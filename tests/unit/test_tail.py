"""The tailer: every committed entry published exactly once, in order, whatever arrives when."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from routee.callbacks.v1 import callback_pb2 as pb
from service.domain.entries import Entry, StoredEvent
from service.log.tail import Tailer


def update(sequence: int) -> Entry:
    return StoredEvent(sequence, f"m{sequence}", "c1", pb.MESSAGE_STATUS_QUEUED, "Queued", 0, 0, True, b"")


class FakeLog:
    """Committed entries 1..head, readable in pages; counts the reads."""

    def __init__(self, head: int = 0) -> None:
        self.head = head
        self.reads = 0
        self.fail_next = False

    async def read_after(self, position: int, limit: int) -> list[Entry]:
        self.reads += 1
        if self.fail_next:
            self.fail_next = False
            raise OSError("the store is away")
        return [update(sequence) for sequence in range(position + 1, min(self.head, position + limit) + 1)]


class Published:
    def __init__(self) -> None:
        self.sequences: list[int] = []

    def __call__(self, entries: Sequence[Entry]) -> None:
        self.sequences.extend(entry.sequence for entry in entries)


async def settle(tailer: Tailer, through: int) -> None:
    async with asyncio.timeout(5):
        while tailer.position < through:
            await asyncio.sleep(0.001)


class TestTailer:
    """Following the log."""

    async def test_entries_in_hand_are_published_without_reading(self) -> None:
        """Hints that continue the log are published as they are."""
        log, published = FakeLog(), Published()
        tailer = Tailer(log.read_after, published, position=0)
        tailer.start()
        tailer.committed([update(1), update(2)])
        tailer.committed([update(3)])
        await settle(tailer, 3)
        await tailer.stop()
        assert published.sequences == [1, 2, 3]
        assert log.reads == 0

    async def test_a_gap_before_a_hint_is_read_from_the_store_first(self) -> None:
        """Another process committed 4 to 8: they are read and published before our 9 and 10."""
        log, published = FakeLog(head=10), Published()
        tailer = Tailer(log.read_after, published, position=3, page=2)
        tailer.start()
        tailer.committed([update(9), update(10)])
        await settle(tailer, 10)
        await tailer.stop()
        assert published.sequences == [4, 5, 6, 7, 8, 9, 10]

    async def test_old_and_repeated_entries_are_not_published_again(self) -> None:
        """A hint overlapping what was published (a feed after a reconnect) publishes only what is new."""
        log, published = FakeLog(head=5), Published()
        tailer = Tailer(log.read_after, published, position=0)
        tailer.start()
        tailer.changed()
        await settle(tailer, 5)
        tailer.committed([update(4), update(5), update(6)])
        tailer.committed([update(2)])
        await settle(tailer, 6)
        await tailer.stop()
        assert published.sequences == [1, 2, 3, 4, 5, 6]

    async def test_a_failed_read_is_retried(self) -> None:
        """A store that fails once delays publishing; it does not lose or stop it."""
        log, published = FakeLog(head=3), Published()
        log.fail_next = True
        tailer = Tailer(log.read_after, published, position=0)
        tailer.start()
        tailer.changed()
        await settle(tailer, 3)
        await tailer.stop()
        assert published.sequences == [1, 2, 3]

    async def test_entries_nobody_needs_are_skipped_only_when_they_continue_the_log(self) -> None:
        """A worker without streams moves past a frame that continues the log; one after a gap is not skipped."""
        log, published, skipped = FakeLog(head=9), Published(), []
        tailer = Tailer(log.read_after, published, position=4, skipped=skipped.append)
        assert tailer.skip(5, 7)
        assert (tailer.position, skipped) == (7, [7])
        assert not tailer.skip(9, 9), "8 is missing: the frame must be read and the gap filled"
        assert tailer.position == 7
