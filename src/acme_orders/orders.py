"""The order's life cycle, shared by the services that move it along.

pending -> reserved -> paid | payment_failed, and pending -> out_of_stock. A status never moves
backwards and a final status never changes: the services ask for a transition from the status
they expect, and a trigger in the database refuses any other.
"""

from __future__ import annotations

from enum import StrEnum
from uuid import UUID

from acme_orders.database import Connection


class OrderStatus(StrEnum):
    PENDING = "pending"
    RESERVED = "reserved"
    PAID = "paid"
    PAYMENT_FAILED = "payment_failed"
    OUT_OF_STOCK = "out_of_stock"


FINAL_STATUSES = frozenset({OrderStatus.PAID, OrderStatus.PAYMENT_FAILED, OrderStatus.OUT_OF_STOCK})


class UnprocessableEventError(Exception):
    """The event can never succeed as it is (for example it names an order that does not exist):
    retrying is pointless, so it goes to the dead-letter queue with this message as the reason."""


async def lock_order(tx: Connection, order_id: UUID) -> OrderStatus:
    """Lock the order row for this transaction and return its status. NO KEY UPDATE: only the
    status will change, so rows that merely reference the order are not held up."""
    status = await tx.fetchval(
        "SELECT status FROM orders WHERE id = $1 FOR NO KEY UPDATE", order_id
    )
    if status is None:
        raise UnprocessableEventError(f"order {order_id} does not exist")
    return OrderStatus(status)


async def set_order_status(tx: Connection, order_id: UUID, status: OrderStatus) -> None:
    """Write the new status; the trigger stamps updated_at and refuses an illegal transition."""
    await tx.execute("UPDATE orders SET status = $2 WHERE id = $1", order_id, status.value)
