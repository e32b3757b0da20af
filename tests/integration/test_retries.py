"""Retries that wait, against the real RabbitMQ and PostgreSQL: a failing handler's message waits
in a retry queue, longer after each attempt, without holding up its queue; after the last attempt
it is parked with the last error; and migrate follows the retry settings by itself."""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from uuid import UUID, uuid4

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aio_pika.exceptions import ChannelNotFoundEntity

from acme_orders.core.consumer import Consumer, Route, serve_consumers
from acme_orders.core.database import Connection
from acme_orders.core.events import Event, OrderLine, OrderPlaced
from acme_orders.core.messaging import declare_queue, declare_topology
from acme_orders.core.retries import (
    ATTEMPT_HEADER,
    LAST_ERROR_HEADER,
    RETRY_EXCHANGE,
    attempt_of,
    retry_delay,
    retry_queue_name,
)
from acme_orders.core.settings import Settings
from acme_orders.core.topology import QueueSpec
from acme_orders.ops.dead_letters import replay_dead_letters
from tests.support.environment import TestEnvironment
from tests.support.waiting import wait_until

# A loaded machine may hand a message over this much later than its expiration; never earlier.
LATENESS = 1.5


@pytest.fixture
async def channel(session_env: TestEnvironment) -> AsyncIterator[AbstractChannel]:
    # Not a robust one: after a refused passive declare, its reopened channel would declare again
    # every queue it had seen, deleted ones included.
    connection = await aio_pika.connect(session_env.rabbitmq_url)
    async with connection:
        yield await connection.channel()


@pytest.fixture
def queue_spec() -> QueueSpec:
    key = f"test.{secrets.token_hex(4)}"
    return QueueSpec(f"testsvc.{key}", (key,))


# Not compared by value: the consumer groups events by handler, in a dict.
@dataclass(eq=False)
class FlakyHandler:
    """Fails each event in `failing` (with its attempt in the message) until it is `healed`, or
    for `fails_for` seconds from its first attempt; records when each event was tried, and which
    were handled."""

    failing: set[UUID] = field(default_factory=set)
    healed: set[UUID] = field(default_factory=set)
    fails_for: float | None = None
    tried: dict[UUID, list[float]] = field(default_factory=dict)
    handled: dict[UUID, float] = field(default_factory=dict)

    async def __call__(self, events: Sequence[OrderPlaced], tx: Connection) -> Sequence[Event]:
        now = time.monotonic()
        for event in events:
            attempts = self.tried.setdefault(event.event_id, [])
            attempts.append(now)
            over = self.fails_for is not None and now - attempts[0] >= self.fails_for
            if event.event_id in self.failing and event.event_id not in self.healed and not over:
                raise RuntimeError(f"failure {len(attempts)} of {event.event_id}")
        for event in events:
            self.handled[event.event_id] = now
        return []


def placed() -> OrderPlaced:
    return OrderPlaced(
        order_id=uuid4(),
        customer_id="C1",
        email="c1@example.com",
        items=(OrderLine(sku="TSHIRT-BLK-M", qty=1, unit_price=Decimal("19.90")),),
        total=Decimal("19.90"),
    )


async def publish(channel: AbstractChannel, spec: QueueSpec, event: Event) -> None:
    """Send the event to the test's queue by its name: through acme.events, an event must travel
    with its own routing key (or be parked as skipped), which every test queue would receive."""
    await channel.default_exchange.publish(
        aio_pika.Message(
            event.model_dump_json().encode(),
            content_type="application/json",
            message_id=str(event.event_id),
            type=event.event_type,
        ),
        routing_key=spec.name,
    )


@asynccontextmanager
async def consuming(
    settings: Settings, channel: AbstractChannel, spec: QueueSpec, handler: FlakyHandler
) -> AsyncIterator[None]:
    await declare_queue(channel, spec, settings.quorum_group_size)
    consumer = Consumer("testsvc", spec, [Route(OrderPlaced, handler)])
    stop = asyncio.Event()
    task = asyncio.create_task(serve_consumers(settings, stop, "testsvc", [consumer]))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _parked(channel: AbstractChannel, spec: QueueSpec) -> AbstractIncomingMessage | None:
    queue = await channel.get_queue(spec.dead_letter_queue)
    return await queue.get(no_ack=True, fail=False)


async def test_a_failing_handler_is_tried_again_after_growing_waits_then_parked_with_its_error(
    session_env: TestEnvironment,
    channel: AbstractChannel,
    queue_spec: QueueSpec,
    pool: asyncpg.Pool,
) -> None:
    settings = session_env.settings(retry_initial_delay=0.4, retry_max_delay=1.6, max_attempts=5)
    handler = FlakyHandler()
    event = placed()
    handler.failing.add(event.event_id)

    async with consuming(settings, channel, queue_spec, handler):
        await publish(channel, queue_spec, event)
        parked = await wait_until(
            lambda: _parked(channel, queue_spec), deadline=30, what="the message parked"
        )

    attempts = handler.tried[event.event_id]
    assert len(attempts) == 5, "each attempt once, the last one parks it"
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    longest = [retry_delay(n, 0.4, 1.6) for n in range(1, 5)]
    assert longest == [0.4, 0.8, 1.6, 1.6]
    for gap, wait in zip(gaps, longest, strict=True):
        # Jittered between half the wait and all of it; handed over late on a busy machine.
        assert wait / 2 - 0.05 <= gap <= wait + LATENESS, (gaps, longest)
    # The waits grow: the failures are spread out, not burnt through at once.
    assert gaps[2] > gaps[0], gaps
    assert gaps[3] > gaps[0], gaps
    assert attempts[-1] - attempts[0] >= sum(longest) / 2 - 0.1

    headers = parked.headers or {}
    assert headers[ATTEMPT_HEADER] == 5
    assert headers[LAST_ERROR_HEADER] == f"RuntimeError: failure 4 of {event.event_id}"
    reason = headers["x-dead-letter-reason"]
    assert (
        reason
        == f"handler failed 5 attempt(s); last error: RuntimeError: failure 5 of {event.event_id}"
    )
    assert parked.message_id == str(event.event_id)
    assert event.event_id not in handler.handled
    # Nothing of the failed attempts was committed.
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM processed_events WHERE event_id = $1", event.event_id
        )
        == 0
    )


async def test_a_handler_failing_for_longer_than_a_burst_of_redeliveries_recovers_its_message(
    session_env: TestEnvironment, channel: AbstractChannel, queue_spec: QueueSpec
) -> None:
    # The 30 s outage scaled down: 10 s of failures, which a quorum queue's 10
    # redeliveries, at most a second apart, used up in less, against at least
    # (2 + 4 + 8 + 8) / 2 = 11 s of waits over 5 attempts.
    settings = session_env.settings(retry_initial_delay=2.0, retry_max_delay=8.0, max_attempts=5)
    handler = FlakyHandler(fails_for=10.0)
    event = placed()
    handler.failing.add(event.event_id)

    async with consuming(settings, channel, queue_spec, handler):
        await publish(channel, queue_spec, event)
        await wait_until(
            lambda: _value(event.event_id in handler.handled or _gone(handler, event)),
            deadline=60,
            what="the message handled, or given up",
        )

    attempts = handler.tried[event.event_id]
    assert event.event_id in handler.handled, [round(t - attempts[0], 2) for t in attempts]
    assert len(attempts) <= 5
    assert await _parked(channel, queue_spec) is None


def _gone(handler: FlakyHandler, event: Event) -> bool:
    # Five failed attempts: it is parked, or on the old code still being redelivered.
    return len(handler.tried.get(event.event_id, [])) > 5


async def test_a_message_waiting_for_its_next_attempt_holds_up_no_other_message(
    session_env: TestEnvironment, channel: AbstractChannel, queue_spec: QueueSpec
) -> None:
    # One message at a time: a message held while it waits would stop the whole queue.
    settings = session_env.settings(
        retry_initial_delay=3.0, retry_max_delay=3.0, max_attempts=2, prefetch_count=1
    )
    handler = FlakyHandler()
    waiting, *others = [placed() for _ in range(5)]
    handler.failing.add(waiting.event_id)

    async with consuming(settings, channel, queue_spec, handler):
        await publish(channel, queue_spec, waiting)
        await wait_until(
            lambda: _value(waiting.event_id in handler.tried), what="the first attempt"
        )
        # It heals at once: only the wait stands between it and its second attempt.
        handler.healed.add(waiting.event_id)
        for event in others:
            await publish(channel, queue_spec, event)
        await wait_until(
            lambda: _value(waiting.event_id in handler.handled),
            deadline=30,
            what="the second attempt",
        )

    first, second = handler.tried[waiting.event_id]
    assert second - first >= 3.0 / 2 - 0.05, "it waited for its next attempt"
    assert {e.event_id for e in others} <= set(handler.handled)
    # Every message published behind it was handled while it waited.
    assert all(handler.handled[e.event_id] < second for e in others)


async def _value(value: bool) -> bool:
    return value


async def _exists(channel: AbstractChannel, name: str) -> int | None:
    """The queue's message count, or None when there is no such queue."""
    try:
        queue = await channel.declare_queue(name, passive=True)
    except ChannelNotFoundEntity:
        await channel.reopen()
        return None
    count = queue.declaration_result.message_count
    assert count is not None
    return count


async def test_migrate_follows_changed_retry_settings_with_no_queue_deleted_by_hand(
    session_env: TestEnvironment,
    channel: AbstractChannel,
    queue_spec: QueueSpec,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = queue_spec.name
    await declare_topology(
        session_env.settings(retry_initial_delay=1.0, retry_max_delay=8.0, max_attempts=5),
        [queue_spec],
    )
    assert [await _exists(channel, retry_queue_name(name, n)) for n in range(1, 7)] == [
        0, 0, 0, 0, None, None,
    ]  # fmt: skip
    # A message waiting in a retry queue that the next settings no longer use.
    retry_exchange = await channel.get_exchange(RETRY_EXCHANGE)
    await retry_exchange.publish(
        aio_pika.Message(b"{}", expiration=300), routing_key=retry_queue_name(name, 4)
    )

    # Other delays, fewer attempts: nothing refuses the new settings.
    with caplog.at_level(logging.INFO, logger="acme_orders.core.messaging"):
        await declare_topology(
            session_env.settings(retry_initial_delay=0.5, retry_max_delay=30.0, max_attempts=3),
            [queue_spec],
        )
    assert [await _exists(channel, retry_queue_name(name, n)) for n in range(1, 6)] == [
        0, 0, None, 1, None,
    ]  # fmt: skip
    assert f"retry queue {retry_queue_name(name, 4)} is no longer used" in caplog.text
    assert f"deleted retry queue {retry_queue_name(name, 3)}" in caplog.text

    # Once it has drained, the next migrate deletes it; more attempts add queues.
    await (await channel.get_queue(retry_queue_name(name, 4))).purge()
    await declare_topology(session_env.settings(max_attempts=3), [queue_spec])
    assert await _exists(channel, retry_queue_name(name, 4)) is None
    await declare_topology(session_env.settings(max_attempts=6), [queue_spec])
    assert [await _exists(channel, retry_queue_name(name, n)) for n in range(1, 7)] == [
        0, 0, 0, 0, 0, None,
    ]  # fmt: skip


async def test_a_replayed_dead_letter_has_all_its_attempts_again(
    session_env: TestEnvironment, channel: AbstractChannel, queue_spec: QueueSpec
) -> None:
    settings = session_env.settings()
    await declare_queue(channel, queue_spec, settings.quorum_group_size)
    event = placed()
    await channel.default_exchange.publish(
        aio_pika.Message(
            event.model_dump_json().encode(),
            message_id=str(event.event_id),
            headers={
                ATTEMPT_HEADER: settings.max_attempts,
                LAST_ERROR_HEADER: "RuntimeError: boom",
                "x-dead-letter-reason": "handler failed 8 attempt(s); last error: RuntimeError",
            },
        ),
        routing_key=queue_spec.dead_letter_queue,
    )

    assert await replay_dead_letters(settings, queue_spec.name, None) == 1

    queue = await channel.get_queue(queue_spec.name)
    back = await wait_until(lambda: queue.get(no_ack=True, fail=False), what="the replayed message")
    assert attempt_of(back.headers) == 1
    assert LAST_ERROR_HEADER not in (back.headers or {})
