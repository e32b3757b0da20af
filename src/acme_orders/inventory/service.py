"""The inventory process: its queues and how its handlers are wired to them."""

from __future__ import annotations

import asyncio

from acme_orders.core.consumer import Consumer, Route, serve_consumers
from acme_orders.core.events import OrderPlaced, PaymentFailed
from acme_orders.core.messaging import QueueSpec
from acme_orders.core.settings import Settings
from acme_orders.inventory.stock import release_stock, reserve_stock

SERVICE = "inventory"
ORDER_PLACED_QUEUE = QueueSpec("inventory.order.placed", (OrderPlaced.routing_key,))
PAYMENT_FAILED_QUEUE = QueueSpec("inventory.payment.failed", (PaymentFailed.routing_key,))
QUEUES = (ORDER_PLACED_QUEUE, PAYMENT_FAILED_QUEUE)


def consumers() -> list[Consumer]:
    # Two queues, so that releasing stock never waits behind a backlog of new orders.
    return [
        Consumer(SERVICE, ORDER_PLACED_QUEUE, [Route(OrderPlaced, reserve_stock)]),
        Consumer(SERVICE, PAYMENT_FAILED_QUEUE, [Route(PaymentFailed, release_stock)]),
    ]


async def main(settings: Settings, stop: asyncio.Event) -> None:
    await serve_consumers(settings, stop, SERVICE, consumers())
