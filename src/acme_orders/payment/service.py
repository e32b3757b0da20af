"""The payment process: its queue and how its handler is wired to it."""

from __future__ import annotations

import asyncio
import functools

from acme_orders.core.consumer import Consumer, Route, serve_consumers
from acme_orders.core.events import InventoryReserved
from acme_orders.core.messaging import QueueSpec
from acme_orders.core.settings import Settings
from acme_orders.payment.charge import charge_orders, simulated_gateway

SERVICE = "payment"
INVENTORY_RESERVED_QUEUE = QueueSpec("payment.inventory.reserved", (InventoryReserved.routing_key,))
QUEUES = (INVENTORY_RESERVED_QUEUE,)


def consumers(settings: Settings) -> list[Consumer]:
    gateway = simulated_gateway(settings.payment_success_rate)
    handler = functools.partial(charge_orders, gateway=gateway)
    return [Consumer(SERVICE, INVENTORY_RESERVED_QUEUE, [Route(InventoryReserved, handler)])]


async def main(settings: Settings, stop: asyncio.Event) -> None:
    await serve_consumers(settings, stop, SERVICE, consumers(settings))
