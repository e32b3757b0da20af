"""The payment process: its queue, its gateway, and how its handler is wired to them."""

from __future__ import annotations

import asyncio
import functools

from acme_orders.core import topology
from acme_orders.core.consumer import Consumer, Route, serve_consumers
from acme_orders.core.events import InventoryReserved
from acme_orders.core.settings import Settings
from acme_orders.payment.charge import charge_orders
from acme_orders.payment.gateway import PaymentGateway, SimulatedGateway

SERVICE = topology.PAYMENT


def gateway_from_settings(settings: Settings) -> PaymentGateway:
    """The gateway PAYMENT_GATEWAY names (see the README: plugging in a real payment gateway)."""
    match settings.payment_gateway:
        case "simulated":
            return SimulatedGateway(
                settings.payment_success_rate, settings.payment_gateway_latency_ms / 1000
            )


def consumers(settings: Settings, gateway: PaymentGateway | None = None) -> list[Consumer]:
    handler = functools.partial(
        charge_orders, gateway=gateway if gateway is not None else gateway_from_settings(settings)
    )
    queue = topology.PAYMENT_INVENTORY_RESERVED
    return [Consumer(SERVICE, queue, [Route(InventoryReserved, handler)])]


async def main(settings: Settings, stop: asyncio.Event) -> None:
    await serve_consumers(settings, stop, SERVICE, consumers(settings))
