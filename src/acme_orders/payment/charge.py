"""The payment's decision: charge a reserved order through the gateway, or fail it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from decimal import Decimal
from typing import Literal, NamedTuple
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
from acme_orders.payment.gateway import (
    Charge,
    PaymentGateway,
    charge_idempotency_key,
    payment_id_for,
)

logger = logging.getLogger(__name__)

# The charges of a batch, each with the key it was made with and the gateway's answer: what an
# operator reconciles with the gateway's own records.
RECORD_PAYMENTS = """
INSERT INTO payments
    (order_id, idempotency_key, gateway, gateway_reference, outcome, amount, payment_id, reason)
SELECT order_id, idempotency_key, $3, gateway_reference, outcome, amount, payment_id, reason
FROM unnest($1::uuid[], $2::text[], $4::text[], $5::text[], $6::numeric[], $7::uuid[], $8::text[])
    AS p (order_id, idempotency_key, gateway_reference, outcome, amount, payment_id, reason)
"""
# PaymentFailed.reason holds at most this many characters; a gateway's reason may be longer.
MAX_REASON = 1000


class PaymentRecord(NamedTuple):
    """A row of payments."""

    order_id: UUID
    idempotency_key: str
    gateway_reference: str
    outcome: Literal["completed", "failed"]
    amount: Decimal
    payment_id: UUID
    reason: str | None


async def charge_orders(
    events: Sequence[InventoryReserved], tx: Connection, gateway: PaymentGateway
) -> Sequence[Event]:
    """Charge each reserved order once, with its order's idempotency key; its status becomes
    paid or payment_failed, and the charge is recorded in payments."""
    statuses = await lock_orders(tx, (event.order_id for event in events))
    decided: dict[UUID, OrderStatus] = {}
    emitted: list[Event] = []
    recorded: list[PaymentRecord] = []
    for event in events:
        with event_log_context(event):
            status = decided.get(event.order_id, statuses[event.order_id])
            if status is not OrderStatus.RESERVED:
                logger.info("order %s is already %s; nothing to charge", event.order_id, status)
                continue
            key = charge_idempotency_key(event.order_id)
            result = await gateway.charge(
                Charge(
                    idempotency_key=key,
                    order_id=event.order_id,
                    customer_id=event.customer_id,
                    amount=event.total,
                )
            )
            payment_id = payment_id_for(key)
            if result.approved:
                decided[event.order_id] = OrderStatus.PAID
                reason = None
                effect: Event = PaymentCompleted(
                    order_id=event.order_id,
                    customer_id=event.customer_id,
                    email=event.email,
                    amount=event.total,
                    payment_id=payment_id,
                )
                logger.info("COMPLETED payment of %s for order %s", event.total, event.order_id)
            else:
                decided[event.order_id] = OrderStatus.PAYMENT_FAILED
                reason = (result.decline_reason or "declined")[:MAX_REASON]
                effect = PaymentFailed(
                    order_id=event.order_id,
                    customer_id=event.customer_id,
                    email=event.email,
                    amount=event.total,
                    reason=reason,
                )
                logger.info(
                    "FAILED payment of %s for order %s: %s", event.total, event.order_id, reason
                )
            emitted.append(caused_by(event, effect))
            recorded.append(
                PaymentRecord(
                    order_id=event.order_id,
                    idempotency_key=key,
                    gateway_reference=result.reference,
                    outcome="completed" if result.approved else "failed",
                    amount=event.total,
                    payment_id=payment_id,
                    reason=reason,
                )
            )
    await set_order_statuses(tx, decided)
    await record_payments(tx, gateway.name, recorded)
    return emitted


async def record_payments(tx: Connection, gateway: str, payments: Sequence[PaymentRecord]) -> None:
    """Record the batch's charges, made through `gateway`, in one statement."""
    if not payments:
        return
    await tx.execute(
        RECORD_PAYMENTS,
        [p.order_id for p in payments],
        [p.idempotency_key for p in payments],
        gateway,
        [p.gateway_reference for p in payments],
        [p.outcome for p in payments],
        [p.amount for p in payments],
        [p.payment_id for p in payments],
        [p.reason for p in payments],
    )
