"""The notification process: its queue and how its handler is wired to it."""

from __future__ import annotations

import asyncio

from acme_orders.core import topology
from acme_orders.core.consumer import Consumer, Route, serve_consumers
from acme_orders.core.events import OrderCancelled, OrderOutOfStock, PaymentCompleted, PaymentFailed
from acme_orders.core.settings import Settings
from acme_orders.notification.email import send_notifications

SERVICE = topology.NOTIFICATION


def consumers(linger: float = 0.0) -> list[Consumer]:
    return [
        Consumer(
            SERVICE,
            topology.NOTIFICATION_ORDER_OUTCOME,
            [
                Route(PaymentCompleted, send_notifications),
                Route(PaymentFailed, send_notifications),
                Route(OrderOutOfStock, send_notifications),
                Route(OrderCancelled, send_notifications),
            ],
            # An e-mail is the end of an order's story, not a step the order waits for: lingering
            # for larger batches costs the customer milliseconds and saves the pipeline's CPU.
            linger=linger,
        )
    ]


async def main(settings: Settings, stop: asyncio.Event) -> None:
    linger = settings.notification_linger_ms / 1000
    await serve_consumers(settings, stop, SERVICE, consumers(linger))
