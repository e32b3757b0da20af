"""Group commit's batching, with a write that records what it was given (the statement itself is
tested against PostgreSQL in tests/integration/test_group_commit.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from acme_orders.order_api.group_commit import GroupCommit, room_in


class BadItemError(Exception):
    """What a write fails with when an item in it is "bad"."""


class OutageError(Exception):
    pass


class Writes:
    """A write that takes as long as the test lets it: each call waits for `release`."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.running = 0
        self.most_running = 0
        self.outage = False
        # A write holding "stuck" waits for this, as an insert waits for a lock.
        self.unstuck = asyncio.Event()
        self._began = asyncio.Condition()

    async def started(self, count: int) -> None:
        """Until `count` writes have begun (deadline: the test's own timeout)."""
        async with self._began:
            await self._began.wait_for(lambda: len(self.batches) >= count)

    async def write(self, items: Sequence[str]) -> list[str]:
        async with self._began:
            self.batches.append(list(items))
            self._began.notify_all()
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.release.wait()
            if "stuck" in items:
                await self.unstuck.wait()
            if self.outage:
                raise OutageError("down")
            if "bad" in items:
                raise BadItemError("a bad item")
            return [item.upper() for item in items]
        finally:
            self.running -= 1


def group(
    writes: Writes,
    *,
    max_batch: int = 10,
    in_flight: int = 1,
    stalled_after: float = 3600,
    most_in_flight: int = 8,
) -> GroupCommit[str, str]:
    return GroupCommit(
        writes.write,
        max_batch=max_batch,
        in_flight=in_flight,
        alone_after=lambda error: isinstance(error, BadItemError),
        stalled_after=stalled_after,
        most_in_flight=most_in_flight,
    )


async def behind_a_write(
    writes: Writes, commits: GroupCommit[str, str], items: Sequence[str]
) -> list[asyncio.Task[str]]:
    """ "a" submitted and its write held under way, then `items` submitted behind it: the tasks
    of all of them, "a"'s first. The test lets the writes go with writes.release.set()."""
    writes.release.clear()
    tasks = [asyncio.create_task(commits.submit("a"))]
    await writes.started(1)
    tasks += [asyncio.create_task(commits.submit(item)) for item in items]
    await asyncio.sleep(0)
    return tasks


async def test_an_item_alone_is_written_at_once_and_gets_its_own_result() -> None:
    writes = Writes()

    assert await group(writes).submit("a") == "A"
    assert writes.batches == [["a"]]


async def test_what_arrives_while_a_write_runs_goes_into_the_next_write_together() -> None:
    writes = Writes()
    commits = group(writes)
    first, *rest = await behind_a_write(writes, commits, "bcd")
    assert commits.waiting == 3

    writes.release.set()

    assert await first == "A"
    assert [await task for task in rest] == ["B", "C", "D"]
    assert writes.batches == [["a"], ["b", "c", "d"]]


async def test_a_write_holds_at_most_max_batch_items_and_at_most_in_flight_run_at_once() -> None:
    writes = Writes()
    commits = group(writes, max_batch=3, in_flight=2)
    writes.release.clear()
    tasks = [asyncio.create_task(commits.submit(str(n))) for n in range(10)]
    await writes.started(2)

    writes.release.set()

    assert [await task for task in tasks] == [str(n) for n in range(10)]
    assert all(len(batch) <= 3 for batch in writes.batches)
    assert sorted(item for batch in writes.batches for item in batch) == sorted(map(str, range(10)))
    assert writes.most_running == 2


async def test_an_item_that_breaks_its_batch_gets_the_error_alone_the_others_are_written() -> None:
    writes = Writes()
    commits = group(writes)
    tasks = await behind_a_write(writes, commits, ("b", "bad", "c"))

    writes.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert results[:2] == ["A", "B"]
    assert isinstance(results[2], BadItemError)
    assert results[3] == "C"
    # The batch of three failed, then each of them was written alone.
    assert writes.batches == [["a"], ["b", "bad", "c"], ["b"], ["bad"], ["c"]]


async def test_an_outage_is_every_items_error_without_writing_them_one_by_one() -> None:
    writes = Writes()
    commits = group(writes)
    tasks = await behind_a_write(writes, commits, "bc")
    writes.outage = True

    writes.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert all(isinstance(result, OutageError) for result in results)
    assert writes.batches == [["a"], ["b", "c"]]


async def test_a_caller_that_gave_up_before_its_write_began_is_not_written() -> None:
    writes = Writes()
    commits = group(writes)
    first, abandoned, kept = await behind_a_write(writes, commits, "bc")
    abandoned.cancel()

    writes.release.set()

    assert (await first, await kept) == ("A", "C")
    assert writes.batches == [["a"], ["c"]]
    with pytest.raises(asyncio.CancelledError):
        await abandoned


async def test_close_waits_for_the_writes_under_way() -> None:
    writes = Writes()
    commits = group(writes)
    writes.release.clear()
    tasks = [asyncio.create_task(commits.submit(item)) for item in "ab"]
    await writes.started(1)

    closing = asyncio.create_task(commits.close())
    await asyncio.sleep(0)
    assert not closing.done()
    writes.release.set()
    await closing

    assert [task.result() for task in tasks] == ["A", "B"]


def test_a_batch_holds_at_least_one_item() -> None:
    with pytest.raises(ValueError, match="at least one"):
        group(Writes(), max_batch=0)


async def test_a_write_that_stalled_does_not_hold_up_the_items_after_it() -> None:
    writes = Writes()
    commits = group(writes, stalled_after=0.05, most_in_flight=3)
    stuck = asyncio.create_task(commits.submit("stuck"))
    await writes.started(1)

    # Once the stuck write has run 50 ms, the next starts beside it.
    a, b = await asyncio.wait_for(asyncio.gather(commits.submit("a"), commits.submit("b")), 5)

    assert (a, b) == ("A", "B")
    assert not stuck.done()
    writes.unstuck.set()
    assert await stuck == "STUCK"


async def test_no_more_than_most_in_flight_writes_run_however_many_stalled() -> None:
    writes = Writes()
    commits = group(writes, max_batch=1, stalled_after=0.01, most_in_flight=3)
    tasks = [asyncio.create_task(commits.submit("stuck")) for _ in range(5)]
    await writes.started(3)
    await asyncio.sleep(0.05)  # past stalled_after: nothing more may start, however long

    assert (len(writes.batches), commits.waiting) == (3, 2)
    writes.unstuck.set()
    assert [await task for task in tasks] == ["STUCK"] * 5
    assert writes.most_running == 3


@pytest.mark.parametrize(
    ("started", "in_flight", "expected"),
    [
        ([], 1, 0.0),  # nothing runs
        ([10.0], 1, 0.5),  # the one write stalls at 10.5
        ([9.0], 1, 0.0),  # it stalled already
        ([10.0], 2, 0.0),  # room for a second
        ([10.0, 9.8], 2, 0.3),  # the older of the two stalls at 10.3
        ([10.0, 9.8, 9.0], 2, 0.3),  # the stalled one does not count
        ([1.0, 2.0, 3.0, 4.0], 1, None),  # most_in_flight (4) are under way
    ],
)
def test_room_for_a_write_comes_when_enough_of_those_under_way_stalled(
    started: list[float], in_flight: int, expected: float | None
) -> None:
    wait = room_in(started, 10.0, in_flight=in_flight, most_in_flight=4, stalled_after=0.5)
    assert wait == (pytest.approx(expected) if expected is not None else None)
