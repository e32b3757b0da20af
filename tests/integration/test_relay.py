"""The outbox relay against the real RabbitMQ and PostgreSQL."""

from __future__ import annotations

import json
import secrets
from uuid import UUID, uuid4

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue

from acme_orders.events import EXCHANGE
from acme_orders.messaging import declare_exchange
from acme_orders.publisher.relay import relay_outbox_batch
from tests.environment import TestEnvironment


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
