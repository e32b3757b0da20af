"""The payment's decision: charge a reserved order, or fail it."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Sequence
from uuid import UUID

from acme_orders.core.database import Connection
from acme_orders.core.events import (
    Event,
    InventoryReserved,
    PaymentCompleted,
    PaymentFailed,
    caused_by,
)
from acme_orders.core.observability.logs import event_log_context
from acme_orders.core.orders import OrderStatus, lock_orders, set_order_statuses

logger = logging.getLogger(__name__)

Gateway = Callable[[InventoryReserved], bool]


def simulated_gateway(success_rate: float) -> Gateway:
    """A card gateway that accepts a charge with probability `success_rate`."""

    def charge(event: InventoryReserved) -> bool:
        return random.random() < success_rate

    return charge


async def charge_orders(
    events: Sequence[InventoryReserved], tx: Connection, gateway: Gateway
) -> Sequence[Event]:
    """Charge each reserved order once; its status becomes paid or payment_failed."""
    statuses = await lock_orders(tx, (event.order_id for event in events))
    decided: dict[UUID, OrderStatus] = {}
    emitted: list[Event] = []
    for event in events:
        with event_log_context(event):
            status = decided.get(event.order_id, statuses[event.order_id])
            if status is not OrderStatus.RESERVED:
                logger.info("order %s is already %s; nothing to charge", event.order_id, status)
                continue
            if gateway(event):
                decided[event.order_id] = OrderStatus.PAID
                emitted.append(
                    caused_by(
                        event,
                        PaymentCompleted(
                            order_id=event.order_id,
                            customer_id=event.customer_id,
                            email=event.email,
                            amount=event.total,
                            payment_id=uuid.uuid4(),
                        ),
                    )
                )
                logger.info("COMPLETED payment of %s for order %s", event.total, event.order_id)
            else:
                decided[event.order_id] = OrderStatus.PAYMENT_FAILED
                emitted.append(
                    caused_by(
                        event,
                        PaymentFailed(
                            order_id=event.order_id,
                            customer_id=event.customer_id,
                            email=event.email,
                            amount=event.total,
                            reason="card declined",
                        ),
                    )
                )
                logger.info(
                    "FAILED payment of %s for order %s: card declined", event.total, event.order_id
                )
    await set_order_statuses(tx, decided)
    return emitted
