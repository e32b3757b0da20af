"""Waiting on a condition with a deadline, instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(
    probe: Callable[[], Awaitable[T | None]],
    *,
    deadline: float = 15.0,
    what: str = "condition",
    interval: float = 0.05,
) -> T:
    """Call `probe` until it returns something truthy, and return that; fail after `deadline`
    seconds, saying what was awaited and what the probe last returned."""
    give_up = time.monotonic() + deadline
    last: T | None = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)
