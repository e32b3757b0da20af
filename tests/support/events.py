"""Events as the tests place them: an order waiting for its payment, and an event as the relay
would publish it."""

from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

import aio_pika
import asyncpg

from acme_orders.core.events import Event, InventoryReserved, OrderLine


async def reserved_order(
    pool: asyncpg.Pool, total: Decimal = Decimal("19.90")
) -> InventoryReserved:
    """A new order, stored as reserved, and the event that asks the payment to charge it."""
    order_id = uuid4()
    await pool.execute(
        "INSERT INTO orders (id, customer_id, email, status, total) "
        "VALUES ($1, 'C1', 'c1@example.com', 'reserved', $2)",
        order_id,
        total,
    )
    return InventoryReserved(
        order_id=order_id,
        customer_id="C1",
        email="c1@example.com",
        items=(OrderLine(sku="TSHIRT-BLK-M", qty=1, unit_price=total),),
        total=total,
    )


def event_message(event: Event) -> aio_pika.Message:
    """The event as a persistent message, with the properties the relay gives it."""
    return aio_pika.Message(
        event.model_dump_json().encode(),
        content_type="application/json",
        message_id=str(event.event_id),
        type=event.event_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
