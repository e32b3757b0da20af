"""The inventory process: its queues and how its handlers are wired to them."""

from __future__ import annotations

import asyncio

from acme_orders.core import topology
from acme_orders.core.consumer import Consumer, Route, serve_consumers
from acme_orders.core.events import OrderCancelled, OrderPlaced, PaymentFailed
from acme_orders.core.settings import Settings
from acme_orders.inventory.stock import release_stock, reserve_stock

SERVICE = topology.INVENTORY


def consumers() -> list[Consumer]:
    return [
        Consumer(SERVICE, topology.INVENTORY_ORDER_PLACED, [Route(OrderPlaced, reserve_stock)]),
        Consumer(SERVICE, topology.INVENTORY_PAYMENT_FAILED, [Route(PaymentFailed, release_stock)]),
        Consumer(
            SERVICE, topology.INVENTORY_ORDER_CANCELLED, [Route(OrderCancelled, release_stock)]
        ),
    ]


async def main(settings: Settings, stop: asyncio.Event) -> None:
    await serve_consumers(settings, stop, SERVICE, consumers())
