"""The order's life cycle, shared by the services that move it along.

pending -> reserved -> paid | payment_failed, and pending -> out_of_stock; pending or reserved ->
cancelled. A status never moves backwards and a final status never changes: the services ask for a
transition from the status they expect, and a trigger in the database refuses any other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from enum import StrEnum
from uuid import UUID

from acme_orders.core.database import Connection


class OrderStatus(StrEnum):
    PENDING = "pending"
    RESERVED = "reserved"
    PAID = "paid"
    PAYMENT_FAILED = "payment_failed"
    OUT_OF_STOCK = "out_of_stock"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset(
    {
        OrderStatus.PAID,
        OrderStatus.PAYMENT_FAILED,
        OrderStatus.OUT_OF_STOCK,
        OrderStatus.CANCELLED,
    }
)


# The e-mail each final status calls for: notifications.kind, one per final order.
NOTIFICATION_KIND_FOR_STATUS: dict[OrderStatus, str] = {
    OrderStatus.PAID: "order_paid",
    OrderStatus.PAYMENT_FAILED: "payment_failed",
    OrderStatus.OUT_OF_STOCK: "out_of_stock",
    OrderStatus.CANCELLED: "order_cancelled",
}

# Statuses an order can be cancelled from: it has not been charged, refused or told it is out of
# stock yet.
CANCELLABLE_STATUSES = frozenset({OrderStatus.PENDING, OrderStatus.RESERVED})


class CancelReason:
    """OrderCancelled.reason: who cancelled the order."""

    REQUESTED = "requested"
    OPERATOR = "operator"
    TIMED_OUT = "timed_out"


class UnprocessableEventError(Exception):
    """The event can never succeed as it is (for example it names an order that does not exist):
    retrying is pointless, so it goes to the dead-letter queue with this message as the reason."""


LOCK_ORDERS = """
SELECT id, status FROM orders WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE
"""
SET_STATUSES = """
UPDATE orders AS o SET status = new.status
FROM unnest($1::uuid[], $2::text[]) AS new (id, status)
WHERE o.id = new.id
"""


# The orders placed within $1, by status. now(), not clock_timestamp(): a volatile function
# cannot bound an index scan, and with it PostgreSQL read the whole table, every 15 s in the
# publisher (2.4 GB read from outside shared_buffers in 50 s, on 5 million orders).
RECENT_ORDERS_BY_STATUS = """
SELECT status, count(*) AS n FROM orders
WHERE created_at > now() - $1::interval
GROUP BY status
"""


async def count_recent_orders(tx: Connection, window: timedelta) -> dict[OrderStatus, int]:
    """Orders placed within `window` (before the transaction's start), by current status; every
    status is present (0 when none). Reads the window's rows through orders_created_at_idx: cheap
    for a short window, whatever the table's size."""
    records = await tx.fetch(RECENT_ORDERS_BY_STATUS, window)
    counts = dict.fromkeys(OrderStatus, 0)
    counts.update({OrderStatus(r["status"]): r["n"] for r in records})
    return counts


async def lock_orders(tx: Connection, order_ids: Iterable[UUID]) -> dict[UUID, OrderStatus]:
    """Lock the orders' rows for this transaction and return their statuses. Rows are locked in
    id order, the same order in every service, so two transactions that share orders wait for
    each other instead of deadlocking. NO KEY UPDATE: only the status will change, so rows that
    merely reference an order are not held up."""
    ids = sorted(set(order_ids))
    rows = await tx.fetch(LOCK_ORDERS, ids)
    statuses = {row["id"]: OrderStatus(row["status"]) for row in rows}
    for order_id in ids:
        if order_id not in statuses:
            raise UnprocessableEventError(f"order {order_id} does not exist")
    return statuses


async def set_order_statuses(tx: Connection, statuses: Mapping[UUID, OrderStatus]) -> None:
    """Write the new statuses in one statement; the trigger stamps updated_at and refuses an
    illegal transition."""
    if not statuses:
        return
    await tx.execute(
        SET_STATUSES,
        list(statuses),
        [status.value for status in statuses.values()],
    )
