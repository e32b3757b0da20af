"""Cancelling orders: the one transaction that POST /orders/{id}/cancel, `acme-orders cancel`
and the expiry of overdue orders share."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from acme_orders.core.database import Connection
from acme_orders.core.events import OrderCancelled
from acme_orders.core.orders import CANCELLABLE_STATUSES, OrderStatus, set_order_statuses
from acme_orders.core.outbox import add_to_outbox

# The orders to cancel, locked as lock_orders locks them (id order, NO KEY UPDATE), with what the
# OrderCancelled event tells. With $2, only the orders of that API key: another key's order is
# not there at all.
LOCK_ORDERS_TO_CANCEL = """
SELECT id, status, customer_id, email FROM orders
WHERE id = ANY($1::uuid[]) AND ($2::bigint IS NULL OR api_key_id = $2)
ORDER BY id
FOR NO KEY UPDATE
"""


async def cancel_orders(
    tx: Connection,
    order_ids: Iterable[UUID],
    reason: str,
    *,
    only_of: int | None = None,
    correlation_id: str | None = None,
) -> dict[UUID, OrderStatus]:
    """Cancel each of the orders that is not final yet, in this transaction: its status becomes
    cancelled and an OrderCancelled goes to the outbox. Returns the status each order had before
    (an order that does not exist, or is not `only_of`'s, is left out): CANCELLABLE_STATUSES were
    cancelled now; any other status was kept.

    The order's row lock is the one every service takes before it moves the order on, so a cancel
    and a payment (or a reservation) of the same order happen one after the other: the second
    finds the first's status."""
    rows = await tx.fetch(LOCK_ORDERS_TO_CANCEL, sorted(set(order_ids)), only_of)
    before = {row["id"]: OrderStatus(row["status"]) for row in rows}
    cancelled = [row for row in rows if before[row["id"]] in CANCELLABLE_STATUSES]
    await set_order_statuses(tx, {row["id"]: OrderStatus.CANCELLED for row in cancelled})
    await add_to_outbox(
        tx,
        (
            OrderCancelled(
                order_id=row["id"],
                customer_id=row["customer_id"],
                email=row["email"],
                reason=reason,
                correlation_id=correlation_id,
            )
            for row in cancelled
        ),
    )
    return before
