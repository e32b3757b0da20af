"""The payment process: its queue and how its handler is wired to it."""

from __future__ import annotations

import asyncio
import functools

from acme_orders.core import topology
from acme_orders.core.consumer import Consumer, Route, serve_consumers
from acme_orders.core.events import InventoryReserved
from acme_orders.core.settings import Settings
from acme_orders.payment.charge import charge_orders, simulated_gateway

SERVICE = topology.PAYMENT


def consumers(settings: Settings) -> list[Consumer]:
    gateway = simulated_gateway(settings.payment_success_rate)
    handler = functools.partial(charge_orders, gateway=gateway)
    queue = topology.PAYMENT_INVENTORY_RESERVED
    return [Consumer(SERVICE, queue, [Route(InventoryReserved, handler)])]


async def main(settings: Settings, stop: asyncio.Event) -> None:
    await serve_consumers(settings, stop, SERVICE, consumers(settings))
