"""Group commit: what callers submit while a write runs goes into the next write together, one
statement and one commit for all of it. Each caller still waits for its own result, so an order
is answered only once the write that holds it committed.

A commit costs the database a WAL flush however little it writes; under load most of an order's
commit was that flush. At a low rate a write holds one item and starts at once, so nothing waits
for a neighbour that does not come.

A write that has run for `stalled_after` seconds (it waits for a lock, say) no longer counts
against `in_flight`: the next write starts beside it, up to `most_in_flight` at once, so that one
item stuck behind a lock does not hold up every item after it."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """Runs `write` on batches of the submitted items, at most `in_flight` batches at once that
    have not stalled and at most `max_batch` items in each; `write` returns one result per item,
    in their order.

    When a write of several items fails with an error `alone_after` accepts (one that a single
    item may have caused, such as a constraint it breaks), each item is written again on its own,
    so that only the item at fault gets the error. Any other error (the database is down, or busy)
    is every item's: writing them one by one would only take longer to say the same."""

    def __init__(
        self,
        write: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        *,
        max_batch: int,
        in_flight: int,
        alone_after: Callable[[Exception], bool],
        stalled_after: float,
        most_in_flight: int,
    ) -> None:
        if max_batch < 1 or in_flight < 1:
            raise ValueError("a batch holds at least one item, and at least one runs at a time")
        self._write = write
        self._max_batch = max_batch
        self._in_flight = in_flight
        self._alone_after = alone_after
        self._stalled_after = stalled_after
        self._most_in_flight = max(most_in_flight, in_flight)
        self._waiting: collections.deque[tuple[Item, asyncio.Future[Result]]] = collections.deque()
        # Each write under way, and when it began (time.monotonic()).
        self._running: dict[asyncio.Task[None], float] = {}
        self._recheck: asyncio.TimerHandle | None = None

    async def submit(self, item: Item) -> Result:
        """The item's result, once the write that holds it returned; its error if that failed."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._start_writes()
        return await future

    @property
    def waiting(self) -> int:
        """Items submitted and not yet in a write."""
        return len(self._waiting)

    async def close(self) -> None:
        """Wait for the writes under way; what they hold is answered as usual."""
        while self._running:
            await asyncio.wait(list(self._running))

    def _start_writes(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        while self._waiting:
            wait = room_in(
                list(self._running.values()),
                time.monotonic(),
                in_flight=self._in_flight,
                most_in_flight=self._most_in_flight,
                stalled_after=self._stalled_after,
            )
            if wait is None:
                return  # the end of a write starts the next (_finished)
            if wait > 0:
                self._recheck = asyncio.get_running_loop().call_later(wait, self._start_writes)
                return
            batch: list[tuple[Item, asyncio.Future[Result]]] = []
            while self._waiting and len(batch) < self._max_batch:
                item, future = self._waiting.popleft()
                # A caller that gave up (its request was cancelled) before its write began is
                # left out: nothing of it is written.
                if not future.done():
                    batch.append((item, future))
            if batch:
                task = asyncio.create_task(self._run(batch))
                self._running[task] = time.monotonic()
                task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._start_writes()

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            try:
                results = await self._write([item for item, _ in batch])
            except Exception as error:
                if len(batch) == 1 or not self._alone_after(error):
                    for _, future in batch:
                        _fail(future, error)
                    return
                for item, future in batch:
                    await self._run_alone(item, future)
                return
            for (_, future), result in zip(batch, results, strict=True):
                _succeed(future, result)
        except BaseException:
            # Cancelled (the process stops) or broken here: no caller may wait forever.
            for _, future in batch:
                future.cancel()
            raise

    async def _run_alone(self, item: Item, future: asyncio.Future[Result]) -> None:
        try:
            (result,) = await self._write([item])
        except Exception as error:
            _fail(future, error)
        else:
            _succeed(future, result)


def room_in(
    started: Sequence[float],
    now: float,
    *,
    in_flight: int,
    most_in_flight: int,
    stalled_after: float,
) -> float | None:
    """Whether another write may start beside those that began at `started`: 0 now; else in how
    many seconds one may (when enough of them will have stalled); None if only the end of a write
    can make room (`most_in_flight` are under way)."""
    if len(started) >= most_in_flight:
        return None
    going = sorted(at + stalled_after for at in started if at + stalled_after > now)
    if len(going) < in_flight:
        return 0.0
    # Room comes once all but in_flight - 1 of the writes still going have stalled.
    return going[len(going) - in_flight] - now


# A caller that gave up meanwhile (its future cancelled) is answered no more.
def _succeed(future: asyncio.Future[Result], result: Result) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Result], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
