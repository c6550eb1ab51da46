"""Group commit with a store that can be told to fail: a failing batch fails only its own jobs, and the writer
goes on."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from service.domain.entries import StoredEvent
from service.domain.errors import StoreUnavailableError
from service.log.batch_writer import BatchWriter
from service.routee.callbacks import parse_callback
from service.store import AppendStatus, Job, Probe, PruneChunk, WriteResult


def append(tracking_id: str) -> AppendStatus:
    status = '{"name": "Queued", "updatedDate": "2024-05-01T10:00:00Z"}'
    return AppendStatus(parse_callback(f'{{"trackingId": "{tracking_id}", "status": {status}}}'.encode()).callback)


class FakeStore:
    """Records each transaction; ``fail_with`` makes transactions fail, ``poison`` fails any holding that id."""

    def __init__(self) -> None:
        self.transactions: list[list[Job]] = []
        self.fail_with: BaseException | None = None
        self.poison: str | None = None
        self.sequence = 0

    async def write(self, jobs: Sequence[Job], now_us: int) -> WriteResult:
        if self.fail_with is not None:
            raise self.fail_with
        if self.poison and any(
            isinstance(job, AppendStatus) and job.callback.tracking_id == self.poison for job in jobs
        ):
            raise ValueError("a row this database cannot take")
        self.transactions.append(list(jobs))
        result = WriteResult()
        for job in jobs:
            if isinstance(job, AppendStatus):
                self.sequence += 1
                event = StoredEvent(self.sequence, job.callback.tracking_id, "", 1, "Queued", 0, now_us, True, b"")
                result.results.append(event)
                result.entries.append(event)
            else:
                result.results.append(None)
        return result


@pytest.fixture
async def store_and_writer() -> tuple[FakeStore, BatchWriter, list[StoredEvent]]:
    store, committed = FakeStore(), []
    writer = BatchWriter(store, on_commit=committed.extend)  # type: ignore[arg-type]
    writer.start()
    return store, writer, committed


class TestBatchWriter:
    """Submitting jobs."""

    async def test_jobs_submitted_together_share_one_transaction(
        self, store_and_writer: tuple[FakeStore, BatchWriter, list[StoredEvent]]
    ) -> None:
        """Everything submitted in one loop iteration is committed together; each gets its own result."""
        store, writer, committed = store_and_writer
        results = await asyncio.gather(*(writer.submit(append(f"m{i}")) for i in range(10)), writer.submit(Probe()))
        assert len(store.transactions) == 1
        assert [event.sequence for event in results[:10]] == list(range(1, 11))
        assert results[10] is None
        assert [event.sequence for event in committed] == list(range(1, 11))
        await writer.stop()

    async def test_a_retention_chunk_runs_in_a_transaction_of_its_own(
        self, store_and_writer: tuple[FakeStore, BatchWriter, list[StoredEvent]]
    ) -> None:
        """Callbacks submitted with a retention chunk are not held up by it: they commit before or after it."""
        store, writer, _ = store_and_writer
        await asyncio.gather(
            writer.submit(append("m1")),
            writer.submit(PruneChunk(0)),
            writer.submit(append("m2")),
            writer.submit(Probe()),
        )
        assert [[type(job).__name__ for job in jobs] for jobs in store.transactions] == [
            ["AppendStatus"],
            ["PruneChunk"],
            ["AppendStatus", "Probe"],
        ]
        await writer.stop()

    async def test_a_failure_that_is_not_a_database_error_fails_the_batch_and_the_writer_goes_on(
        self, store_and_writer: tuple[FakeStore, BatchWriter, list[StoredEvent]]
    ) -> None:
        """A bug in a batch (not a database error) gives that batch 503; the next callback is kept."""
        store, writer, _ = store_and_writer
        store.fail_with = RuntimeError("a bug")
        with pytest.raises(StoreUnavailableError, match="a bug"):
            await writer.submit(append("m1"))
        assert writer.last_error is not None
        store.fail_with = None
        assert (await writer.submit(append("m2"))).tracking_id == "m2"
        assert writer.last_error is None
        await writer.stop()

    async def test_one_poison_job_does_not_fail_its_neighbours(
        self, store_and_writer: tuple[FakeStore, BatchWriter, list[StoredEvent]]
    ) -> None:
        """A batch that fails for one job's sake is retried a job at a time: only that job fails."""
        store, writer, _ = store_and_writer
        store.poison = "bad"
        outcomes = await asyncio.gather(
            writer.submit(append("good-1")), writer.submit(append("bad")), writer.submit(append("good-2")),
            return_exceptions=True,
        )  # fmt: skip
        assert isinstance(outcomes[1], StoreUnavailableError)
        assert [outcome.tracking_id for outcome in (outcomes[0], outcomes[2])] == ["good-1", "good-2"]  # type: ignore[union-attr]
        await writer.stop()

    async def test_unavailable_store_fails_the_whole_batch_at_once(
        self, store_and_writer: tuple[FakeStore, BatchWriter, list[StoredEvent]]
    ) -> None:
        """When the database itself is away, the batch is not retried job by job (each would wait again)."""
        store, writer, _ = store_and_writer
        store.fail_with = StoreUnavailableError("the store cannot write: server closed the connection")
        outcomes = await asyncio.gather(*(writer.submit(append(f"m{i}")) for i in range(5)), return_exceptions=True)
        assert all(isinstance(outcome, StoreUnavailableError) for outcome in outcomes)
        await writer.stop()

    async def test_each_failed_write_is_observed_once(self) -> None:
        """A batch the store refuses is one failure; a batch split for one poison job counts only that job's."""
        store, failures = FakeStore(), []
        writer = BatchWriter(store, observe_failure=lambda: failures.append(1))  # type: ignore[arg-type]
        writer.start()
        store.poison = "bad"
        await asyncio.gather(*(writer.submit(append(i)) for i in ("good-1", "bad", "good-2")), return_exceptions=True)
        assert len(failures) == 1
        store.fail_with = StoreUnavailableError("the disk is full")
        await asyncio.gather(*(writer.submit(append(f"m{i}")) for i in range(5)), return_exceptions=True)
        assert len(failures) == 2
        store.fail_with = None
        await writer.submit(append("m9"))
        assert len(failures) == 2, "a successful write is not a failure"
        await writer.stop()

    async def test_a_failing_commit_hook_does_not_turn_a_commit_into_a_failure(self) -> None:
        """What was committed is answered as kept even if handing it on fails."""

        def broken(entries: Sequence[StoredEvent]) -> None:
            raise RuntimeError("the broker blew up")

        writer = BatchWriter(FakeStore(), on_commit=broken)  # type: ignore[arg-type]
        writer.start()
        assert (await writer.submit(append("m1"))).sequence == 1
        await writer.stop()

    async def test_a_stopped_writer_refuses_at_once(
        self, store_and_writer: tuple[FakeStore, BatchWriter, list[StoredEvent]]
    ) -> None:
        """After stop (or if its task died), a submission fails immediately instead of waiting forever."""
        _, writer, _ = store_and_writer
        await writer.stop()
        with pytest.raises(StoreUnavailableError, match="not running"):
            await asyncio.wait_for(writer.submit(append("m1")), 1)
