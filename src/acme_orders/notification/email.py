"""The e-mails the customer gets, one per order outcome, and how they are "sent"."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from acme_orders.core.database import Connection
from acme_orders.core.events import (
    Event,
    OrderCancelled,
    OrderOutOfStock,
    PaymentCompleted,
    PaymentFailed,
)
from acme_orders.core.observability.logs import event_log_context
from acme_orders.core.orders import (
    NOTIFICATION_KIND_FOR_STATUS,
    CancelReason,
    OrderStatus,
    lock_orders,
)
from acme_orders.ops.privacy import mask_email

logger = logging.getLogger(__name__)

OrderOutcome = PaymentCompleted | PaymentFailed | OrderOutOfStock | OrderCancelled


@dataclass(frozen=True, slots=True)
class Email:
    kind: str
    title: str
    recipient: str
    subject: str
    body: str


# What the e-mail says of each OrderCancelled.reason we know.
CANCELLED_BECAUSE = {
    CancelReason.REQUESTED: "you asked us to cancel it",
    CancelReason.OPERATOR: "our staff cancelled it",
    CancelReason.TIMED_OUT: "it could not be completed in time",
}


def compose_email(event: OrderOutcome) -> Email:
    order = str(event.order_id)
    match event:
        case PaymentCompleted():
            return Email(
                NOTIFICATION_KIND_FOR_STATUS[OrderStatus.PAID],
                "Order Paid",
                event.email,
                f"Your Acme order {order} is paid",
                f"We received your payment of {event.amount} for order {order}. "
                "We are packing it now.",
            )
        case PaymentFailed():
            return Email(
                NOTIFICATION_KIND_FOR_STATUS[OrderStatus.PAYMENT_FAILED],
                "Payment Failed",
                event.email,
                f"Payment for your Acme order {order} failed",
                f"We could not charge {event.amount} for order {order} ({event.reason}). "
                "Nothing was charged and the order is cancelled.",
            )
        case OrderOutOfStock():
            missing = ", ".join(
                f"{s.sku} (wanted {s.requested}, {s.available} left)" for s in event.shortages
            )
            return Email(
                NOTIFICATION_KIND_FOR_STATUS[OrderStatus.OUT_OF_STOCK],
                "Out of Stock",
                event.email,
                f"Your Acme order {order} could not be fulfilled",
                f"Sorry: not enough stock for {missing}. Nothing was charged.",
            )
        case OrderCancelled():
            why = CANCELLED_BECAUSE.get(event.reason, "it was cancelled")
            return Email(
                NOTIFICATION_KIND_FOR_STATUS[OrderStatus.CANCELLED],
                "Order Cancelled",
                event.email,
                f"Your Acme order {order} is cancelled",
                f"Order {order} is cancelled: {why}. Nothing was charged.",
            )


# Each order is told each outcome once: (order_id, kind) is unique.
RECORD_NOTIFICATIONS = """
INSERT INTO notifications (order_id, kind, recipient, subject, body)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
ON CONFLICT (order_id, kind) DO NOTHING
RETURNING order_id, kind
"""


async def send_notifications(events: Sequence[OrderOutcome], tx: Connection) -> Sequence[Event]:
    """Record each e-mail and "send" it: a log line, with the recipient masked. An order is told
    each outcome once, however often its event arrives."""
    await lock_orders(tx, (event.order_id for event in events))
    emails = [(event, compose_email(event)) for event in events]
    stored = {
        (row["order_id"], row["kind"])
        for row in await tx.fetch(
            RECORD_NOTIFICATIONS,
            [event.order_id for event, _ in emails],
            [email.kind for _, email in emails],
            [email.recipient for _, email in emails],
            [email.subject for _, email in emails],
            [email.body for _, email in emails],
        )
    }
    for event, email in emails:
        order_id = event.order_id
        with event_log_context(event):
            if (order_id, email.kind) in stored:
                stored.discard((order_id, email.kind))
                logger.info(
                    "%s: e-mail sent to %s for order %s",
                    email.title,
                    mask_email(email.recipient),
                    order_id,
                )
            else:
                logger.info("order %s was already told %s; not sending again", order_id, email.kind)
    return []
