"""The payment's decision: charge a reserved order, or fail it."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Sequence

from acme_orders.database import Connection
from acme_orders.events import Event, InventoryReserved, PaymentCompleted, PaymentFailed
from acme_orders.orders import OrderStatus, lock_order, set_order_status

logger = logging.getLogger(__name__)

Gateway = Callable[[InventoryReserved], bool]


def simulated_gateway(success_rate: float) -> Gateway:
    """A card gateway that accepts a charge with probability `success_rate`."""

    def charge(event: InventoryReserved) -> bool:
        return random.random() < success_rate

    return charge


async def charge_order(
    event: InventoryReserved, tx: Connection, gateway: Gateway
) -> Sequence[Event]:
    status = await lock_order(tx, event.order_id)
    if status is not OrderStatus.RESERVED:
        logger.info("order %s is already %s; nothing to charge", event.order_id, status)
        return []
    if gateway(event):
        await set_order_status(tx, event.order_id, OrderStatus.PAID)
        logger.info("COMPLETED payment of %s for order %s", event.total, event.order_id)
        return [
            PaymentCompleted(
                order_id=event.order_id,
                customer_id=event.customer_id,
                email=event.email,
                amount=event.total,
                payment_id=uuid.uuid4(),
            )
        ]
    await set_order_status(tx, event.order_id, OrderStatus.PAYMENT_FAILED)
    logger.info("FAILED payment of %s for order %s: card declined", event.total, event.order_id)
    return [
        PaymentFailed(
            order_id=event.order_id,
            customer_id=event.customer_id,
            email=event.email,
            amount=event.total,
            reason="card declined",
        )
    ]
