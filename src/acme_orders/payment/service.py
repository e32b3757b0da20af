"""The payment process: its queue and how its handler is wired to it."""

from __future__ import annotations

import asyncio
import functools

from acme_orders.consumer import Consumer, Route, serve_consumers
from acme_orders.events import InventoryReserved
from acme_orders.messaging import QueueSpec
from acme_orders.payment.charge import charge_orders, simulated_gateway
from acme_orders.settings import Settings

SERVICE = "payment"
INVENTORY_RESERVED_QUEUE = QueueSpec("payment.inventory.reserved", (InventoryReserved.routing_key,))
QUEUES = (INVENTORY_RESERVED_QUEUE,)


def consumers(settings: Settings) -> list[Consumer]:
    gateway = simulated_gateway(settings.payment_success_rate)
    handler = functools.partial(charge_orders, gateway=gateway)
    return [Consumer(SERVICE, INVENTORY_RESERVED_QUEUE, [Route(InventoryReserved, handler)])]


async def main(settings: Settings, stop: asyncio.Event) -> None:
    await serve_consumers(settings, stop, SERVICE, consumers(settings))
