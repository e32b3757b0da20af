"""Where orders wait (ops/waiting.py), against the real PostgreSQL and RabbitMQ: each stage an
order can be stuck at, written as the pipeline would leave it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel

from acme_orders.core.topology import PAYMENT_INVENTORY_RESERVED
from acme_orders.ops.waiting import (
    WaitStage,
    count_waiting_orders,
    where_orders_wait,
)
from tests.support.environment import TestEnvironment

INSERT_ORDER = """
INSERT INTO orders (id, customer_id, email, status, total, created_at, updated_at)
VALUES ($1, 'C1', 'c1@example.com', $2, 10, now() - $3::interval, now() - $3::interval)
"""
INSERT_EVENT = """
INSERT INTO event_outbox (event_id, event_type, routing_key, order_id, payload, status,
                          created_at, published_at)
VALUES ($1, $2, $3, $4, '{}', $5, now() - $6::interval,
        CASE WHEN $5 = 'SENT' THEN now() - $6::interval END)
"""
INSERT_PROCESSED = "INSERT INTO processed_events (service, event_id) VALUES ($1, $2)"


async def order(pool: asyncpg.Pool, status: str, age: timedelta) -> UUID:
    order_id = uuid4()
    await pool.execute(INSERT_ORDER, order_id, status, age)
    return order_id


async def event(
    pool: asyncpg.Pool, order_id: UUID, event_type: str, status: str, age: timedelta
) -> UUID:
    routing_key = {"OrderPlaced": "order.placed", "InventoryReserved": "inventory.reserved"}
    event_id = uuid4()
    await pool.execute(
        INSERT_EVENT, event_id, event_type, routing_key[event_type], order_id, status, age
    )
    return event_id


async def park(channel: AbstractChannel, event_id: UUID, order_id: UUID, reason: str) -> None:
    """The event's message in payment's dead-letter queue, as the consumer parks it."""
    body = {"event_id": str(event_id), "event_type": "InventoryReserved", "order_id": str(order_id)}
    await channel.default_exchange.publish(
        aio_pika.Message(
            json.dumps(body).encode(),
            headers={
                "x-dead-letter-reason": reason,
                "x-dead-letter-queue": PAYMENT_INVENTORY_RESERVED.name,
                "x-dead-lettered-at": datetime.now(UTC).isoformat(),
            },
            message_id=str(event_id),
            type="InventoryReserved",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=PAYMENT_INVENTORY_RESERVED.dead_letter_queue,
    )


async def test_each_waiting_order_is_found_where_it_waits(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool, fresh_channel: AbstractChannel
) -> None:
    settings = fresh_env.settings()
    minute = timedelta(minutes=1)

    in_outbox = await order(fresh_pool, "pending", 10 * minute)
    placed_new = await event(fresh_pool, in_outbox, "OrderPlaced", "NEW", 10 * minute)

    in_broker = await order(fresh_pool, "pending", 9 * minute)
    await event(fresh_pool, in_broker, "OrderPlaced", "SENT", 9 * minute)

    parked = await order(fresh_pool, "reserved", 8 * minute)
    placed = await event(fresh_pool, parked, "OrderPlaced", "SENT", 8 * minute)
    await fresh_pool.execute(INSERT_PROCESSED, "inventory", placed)
    reserved = await event(fresh_pool, parked, "InventoryReserved", "SENT", 7 * minute)
    # A dead letter of another event in the same queue, before it: it stays too, in its place.
    await park(fresh_channel, uuid4(), uuid4(), "someone else's")
    await park(fresh_channel, reserved, parked, "skipped: no route")

    handled = await order(fresh_pool, "reserved", 6 * minute)
    handled_event = await event(fresh_pool, handled, "InventoryReserved", "SENT", 6 * minute)
    await fresh_pool.execute(INSERT_PROCESSED, "payment", handled_event)

    without_event = await order(fresh_pool, "pending", 5 * minute)

    # Not listed: too recent, or final.
    await event(
        fresh_pool,
        await order(fresh_pool, "pending", timedelta(0)),
        "OrderPlaced",
        "NEW",
        timedelta(0),
    )
    await order(fresh_pool, "paid", 10 * minute)

    found = await where_orders_wait(fresh_pool, settings, older_than=minute, limit=10)

    assert [w.order_id for w in found] == [in_outbox, in_broker, parked, handled, without_event]
    by_id = {w.order_id: w for w in found}
    assert by_id[in_outbox].stage is WaitStage.OUTBOX
    assert by_id[in_outbox].event_id == placed_new
    assert by_id[in_outbox].event_type == "OrderPlaced"
    assert by_id[in_broker].stage is WaitStage.BROKER
    assert by_id[in_broker].services == ("inventory",)
    assert by_id[in_broker].queues == ("inventory.order.placed",)
    assert by_id[parked].stage is WaitStage.DEAD_LETTER
    assert by_id[parked].status == "reserved"
    assert by_id[parked].event_id == reserved
    assert by_id[parked].services == ("payment",)
    assert by_id[parked].queues == (PAYMENT_INVENTORY_RESERVED.name,)
    assert by_id[parked].dead_letter_reason == "skipped: no route"
    assert "payment.inventory.reserved.dlq" in by_id[parked].describe()
    assert by_id[handled].stage is WaitStage.HANDLED
    assert by_id[without_event].stage is WaitStage.NO_EVENT
    assert by_id[without_event].since == by_id[without_event].placed_at

    # Bounded, oldest first; the count is of all of them.
    first_two = await where_orders_wait(fresh_pool, settings, older_than=minute, limit=2)
    assert [w.order_id for w in first_two] == [in_outbox, in_broker]
    assert await count_waiting_orders(fresh_pool, minute) == 5

    # Reading the dead-letter queue lost and reordered nothing.
    dlq = await fresh_channel.declare_queue(
        PAYMENT_INVENTORY_RESERVED.dead_letter_queue, passive=True
    )
    assert dlq.declaration_result.message_count == 2
    first = await dlq.get(no_ack=False)
    second = await dlq.get(no_ack=False)
    assert first is not None
    assert second is not None
    assert second.message_id == str(reserved)
    await first.nack(requeue=True)
    await second.nack(requeue=True)

    # Without the broker, the parked order is reported as waiting in it.
    blind = await where_orders_wait(
        fresh_pool, settings, older_than=minute, limit=10, read_dead_letters=False
    )
    assert {w.order_id: w.stage for w in blind}[parked] is WaitStage.BROKER


async def test_orders_before_the_expiry_watermark_are_not_read(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool
) -> None:
    """Every order placed before the expiry's watermark is final (db/009_cancellation.sql), so
    the orders before it are not even looked at."""
    old = await order(fresh_pool, "pending", timedelta(hours=2))
    recent = await order(fresh_pool, "pending", timedelta(minutes=30))
    await fresh_pool.execute(
        "INSERT INTO order_expiry (expired_through, through_id) "
        "VALUES (now() - interval '1 hour', $1)",
        uuid4(),
    )

    found = await where_orders_wait(
        fresh_pool, fresh_env.settings(), older_than=timedelta(minutes=1), limit=10
    )

    assert [w.order_id for w in found] == [recent]
    assert old not in {w.order_id for w in found}
    assert await count_waiting_orders(fresh_pool, timedelta(minutes=1)) == 1
