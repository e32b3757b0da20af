"""The outbox relay against the real RabbitMQ and PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue

from acme_orders.core.database import close_pool, create_pool
from acme_orders.core.events import EXCHANGE
from acme_orders.core.messaging import connect, declare_exchange
from acme_orders.publisher.relay import relay_outbox_batch
from acme_orders.publisher.service import (
    FIRST_PAUSE,
    MAX_PAUSE,
    next_pause,
    open_exchange,
    relay_until_stopped,
)
from tests.support.environment import TestEnvironment
from tests.support.faults import TcpProxy
from tests.support.waiting import wait_until


async def insert_events(pool: asyncpg.Pool, routing_key: str, n: int) -> list[UUID]:
    ids = [uuid4() for _ in range(n)]
    await pool.executemany(
        """
        INSERT INTO event_outbox (event_id, event_type, routing_key, payload)
        VALUES ($1, 'TestHappened', $2, $3::jsonb)
        """,
        [(i, routing_key, json.dumps({"event_id": str(i), "n": k})) for k, i in enumerate(ids)],
    )
    return ids


async def bound_queue(channel: AbstractChannel, routing_key: str) -> AbstractQueue:
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(EXCHANGE, routing_key)
    return queue


async def test_relay_publishes_new_rows_in_id_order_then_marks_them_sent(
    fresh_channel: AbstractChannel, fresh_pool: asyncpg.Pool
) -> None:
    key = f"test.{secrets.token_hex(4)}"
    queue = await bound_queue(fresh_channel, key)
    exchange = await declare_exchange(fresh_channel)
    ids = await insert_events(fresh_pool, key, 120)

    relayed = 0
    while batch := await relay_outbox_batch(fresh_pool, exchange, limit=50):
        relayed += batch

    received = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        received.append(message)
    assert relayed == 120
    assert [UUID(m.message_id or "") for m in received] == ids
    first = received[0]
    assert first.content_type == "application/json"
    assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert first.type == "TestHappened"
    assert json.loads(first.body) == {"event_id": str(ids[0]), "n": 0}
    rows = await fresh_pool.fetch(
        "SELECT status, published_at FROM event_outbox WHERE event_id = ANY($1::uuid[])", ids
    )
    assert {r["status"] for r in rows} == {"SENT"}
    assert all(r["published_at"] is not None for r in rows)


async def test_rows_stay_new_when_the_broker_refuses_the_batch(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool
) -> None:
    key = f"test.{secrets.token_hex(4)}"
    ids = await insert_events(fresh_pool, key, 3)
    connection = await aio_pika.connect(fresh_env.rabbitmq_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        # Publishing to an exchange that does not exist closes the channel: nothing is confirmed.
        missing = aio_pika.Exchange(
            channel, f"missing.{secrets.token_hex(4)}", aio_pika.ExchangeType.TOPIC
        )
        with pytest.raises(aio_pika.exceptions.AMQPError):
            await relay_outbox_batch(fresh_pool, missing, limit=10_000)

    statuses = await fresh_pool.fetch(
        "SELECT status FROM event_outbox WHERE event_id = ANY($1::uuid[])", ids
    )
    assert {r["status"] for r in statuses} == {"NEW"}


async def test_a_refused_publish_stops_the_rest_of_its_batch_and_leaves_nothing_unretrieved(
    fresh_env: TestEnvironment,
    fresh_pool: asyncpg.Pool,
    fresh_channel: AbstractChannel,
) -> None:
    key = f"test.{secrets.token_hex(4)}"
    batch = 500
    # The broker takes the first few messages, then nacks the rest: the queue refuses to grow.
    refusing = await fresh_channel.declare_queue(
        f"refusing.{key}", arguments={"x-max-length": 5, "x-overflow": "reject-publish"}
    )
    await refusing.bind(EXCHANGE, key)
    # Sees every message of the key that reached the broker, and the marker after them.
    marker_key = f"marker.{key}"
    observer = await fresh_channel.declare_queue(f"observer.{key}")
    await observer.bind(EXCHANGE, key)
    await observer.bind(EXCHANGE, marker_key)
    ids = await insert_events(fresh_pool, key, batch)
    loop = asyncio.get_running_loop()
    # Where "Task/Future exception was never retrieved" goes (asyncio logs it from there).
    unhandled: list[dict[str, Any]] = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    connection = await aio_pika.connect(fresh_env.rabbitmq_url)
    try:
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await declare_exchange(channel)
            before = asyncio.all_tasks()
            with pytest.raises(aio_pika.exceptions.DeliveryError):
                await relay_outbox_batch(fresh_pool, exchange, limit=batch)
            still_publishing = len([t for t in asyncio.all_tasks() - before if not t.done()])
            del before
            # Published on the same channel once the relay gave up: it reaches the broker behind
            # any publish of the batch that was still going on (a channel keeps its order).
            await exchange.publish(aio_pika.Message(b"marker"), routing_key=marker_key)
        # The connection is closed and the relay's tasks are finished and collected: an
        # exception nobody retrieved would have reached the loop's handler by now.
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous_handler)

    reached_broker = []
    while (message := await observer.get(no_ack=True, fail=False)) is not None:
        if message.routing_key == marker_key:
            break
        reached_broker.append(message)
    statuses = await fresh_pool.fetch(
        "SELECT status FROM event_outbox WHERE event_id = ANY($1::uuid[])", ids
    )
    assert {r["status"] for r in statuses} == {"NEW"}
    assert still_publishing == 0, f"{still_publishing} publishes outlived their batch"
    # Before the fix all 500 went out, most of them after their rows were NEW again (duplicates
    # of the next attempt); now only those already on their way when the first nack came.
    assert len(reached_broker) < batch
    assert unhandled == []


async def test_after_a_nacked_batch_the_relay_publishes_on_a_fresh_channel(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool, fresh_channel: AbstractChannel
) -> None:
    key = f"test.{secrets.token_hex(4)}"
    # A queue that refuses every message: the broker nacks what is routed to it, as it may nack
    # a channel's publishes to a quorum queue whose leader died.
    refusing = await fresh_channel.declare_queue(
        f"refusing.{key}", arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    await refusing.bind(EXCHANGE, key)
    ids = await insert_events(fresh_pool, key, 3)
    settings = fresh_env.settings()
    stop = asyncio.Event()
    connection = await connect(settings, "test")
    try:
        first = await open_exchange(connection)
        relay = asyncio.create_task(
            relay_until_stopped(settings, fresh_pool, connection, stop, first)
        )
        try:
            # The nacked batch stays NEW, and the channel it went out on is given up.
            await wait_until(
                lambda: asyncio.sleep(0, first.channel.is_closed), what="a new channel"
            )
            await refusing.delete(if_unused=False, if_empty=False)

            async def all_sent() -> bool:
                rows = await fresh_pool.fetch(
                    "SELECT status FROM event_outbox WHERE event_id = ANY($1::uuid[])", ids
                )
                return {r["status"] for r in rows} == {"SENT"}

            await wait_until(all_sent, what="the batch relayed on the new channel")
        finally:
            stop.set()
            await relay
    finally:
        await connection.close()


def test_the_pause_after_failed_batches_never_outgrows_a_second() -> None:
    pause = FIRST_PAUSE
    pauses = []
    for _ in range(20):
        pauses.append(pause)
        pause = next_pause(pause)

    assert pauses[:4] == [0.1, 0.2, 0.4, 0.8]
    assert max(pauses) == MAX_PAUSE <= 1.0


async def test_a_database_outage_costs_the_relay_one_warning_and_not_its_channel(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    key = f"test.{secrets.token_hex(4)}"
    database = await TcpProxy("127.0.0.1", 5432).start()
    settings = fresh_env.settings(
        # It looks at the outbox often, so that it meets the outage many times over.
        outbox_poll_interval=0.2,
    ).model_copy(
        update={"database_url": fresh_env.database_url.replace(":5432/", f":{database.port}/")}
    )
    pool = await create_pool(settings, min_size=0, max_size=2)
    connection = await connect(settings, "test")
    stop = asyncio.Event()

    def sent(ids: list[UUID]) -> Callable[[], Awaitable[bool]]:
        async def probe() -> bool:
            rows = await fresh_pool.fetch(
                "SELECT status FROM event_outbox WHERE event_id = ANY($1::uuid[])", ids
            )
            return {r["status"] for r in rows} == {"SENT"}

        return probe

    try:
        first = await open_exchange(connection)
        relay = asyncio.create_task(relay_until_stopped(settings, pool, connection, stop, first))
        try:
            await wait_until(sent(await insert_events(fresh_pool, key, 3)), what="relayed")
            with caplog.at_level(logging.INFO, logger="acme_orders"):
                await database.cut()
                waiting = await insert_events(fresh_pool, key, 3)
                await asyncio.sleep(3.0)  # the length of the outage, not a wait for a result
                await database.restore()
                await wait_until(sent(waiting), what="the rows of the outage relayed")
            # Nothing was wrong with it: the rows of the outage went out on the same channel.
            assert not first.channel.is_closed
        finally:
            stop.set()
            await relay
    finally:
        await connection.close()
        await close_pool(pool)
        await database.stop()

    # The relay's lines and its LISTEN's (which reconnects through runtime.retry_until_ready).
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("database unavailable")
    assert any(r.getMessage().startswith("database back after") for r in caplog.records)
