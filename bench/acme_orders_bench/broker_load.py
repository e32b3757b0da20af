"""One side of the broker-only ceiling, as a process of its own: `publish` (persistent messages
with publisher confirms, many in flight) or `consume` (manual acks), each on the same kind of
queue as the system's (a quorum queue bound to acme.events).

Run by ceilings.py: `python -m acme_orders_bench.broker_load publish|consume URL SECONDS
PREFETCH`. It connects, prints "ready", waits for a line on stdin so that both sides start
together, works for SECONDS, and prints one JSON line with what it did."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aio_pika
import uvloop
from aio_pika.abc import AbstractIncomingMessage

from acme_orders.core.events import OrderLine, OrderPlaced
from acme_orders.core.messaging import declare_exchange, declare_queue
from acme_orders.core.settings import get_settings
from acme_orders.core.topology import QueueSpec

QUEUE = QueueSpec("bench.ceiling", ("bench.ceiling",))
# Publishes awaiting their confirm at any moment: as the outbox publisher does with a batch.
IN_FLIGHT = 500


def sample_body() -> bytes:
    """The body of a typical OrderPlaced: two lines."""
    event = OrderPlaced(
        order_id=uuid.uuid4(),
        occurred_at=datetime.now(UTC),
        customer_id="B12345",
        email="b12345@example.com",
        items=(
            OrderLine(sku="HOODIE-NVY-L", qty=2, unit_price=Decimal("49.00")),
            OrderLine(sku="TSHIRT-BLK-M", qty=1, unit_price=Decimal("19.90")),
        ),
        total=Decimal("117.90"),
    )
    return event.model_dump_json().encode()


async def _start_signal() -> None:
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)


async def publish(url: str, seconds: float) -> dict[str, Any]:
    body = sample_body()
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await declare_exchange(channel)
        await declare_queue(channel, QUEUE, get_settings().quorum_group_size)
        await _start_signal()
        confirmed = 0
        started = time.monotonic()
        stop_at = started + seconds

        async def keep_publishing() -> None:
            nonlocal confirmed
            while time.monotonic() < stop_at:
                await exchange.publish(
                    aio_pika.Message(
                        body=body,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=str(uuid.uuid4()),
                        type="OrderPlaced",
                    ),
                    routing_key=QUEUE.routing_keys[0],
                )
                confirmed += 1

        await asyncio.gather(*(keep_publishing() for _ in range(IN_FLIGHT)))
        elapsed = time.monotonic() - started
    return {"messages": confirmed, "seconds": elapsed, "body_bytes": len(body)}


async def consume(url: str, seconds: float, prefetch: int) -> dict[str, Any]:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await declare_queue(channel, QUEUE, get_settings().quorum_group_size)
        await _start_signal()
        acked = 0
        started = time.monotonic()

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal acked
            await message.ack()
            acked += 1

        tag = await queue.consume(on_message)
        await asyncio.sleep(seconds)
        counted = acked
        elapsed = time.monotonic() - started
        await queue.cancel(tag)
    return {"messages": counted, "seconds": elapsed}


def main(argv: list[str]) -> None:
    side, url, seconds = argv[0], argv[1], float(argv[2])
    if side == "publish":
        result = uvloop.run(publish(url, seconds))
    else:
        result = uvloop.run(consume(url, seconds, int(argv[3])))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
