"""The inventory's decisions: reserve an order's stock, or release it (its payment failed, or it
was cancelled).

Both handlers take a batch of events, handled in one transaction, and decide order by order in
delivery order, so a batch decides exactly as the same events would one at a time.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from uuid import UUID

from acme_orders.core.database import Connection
from acme_orders.core.events import (
    Event,
    InventoryReleased,
    InventoryReserved,
    OrderCancelled,
    OrderOutOfStock,
    OrderPlaced,
    PaymentFailed,
    StockLine,
    StockShortage,
    caused_by,
)
from acme_orders.core.observability.logs import event_log_context
from acme_orders.core.orders import OrderStatus, lock_orders
from acme_orders.inventory.reservation import WantedOrder, decide_reservations

logger = logging.getLogger(__name__)


async def reserve_stock(events: Sequence[OrderPlaced], tx: Connection) -> Sequence[Event]:
    """Reserve every line of each order or none of them."""
    statuses = await lock_orders(tx, (event.order_id for event in events))
    pending = []
    for event in events:
        if statuses[event.order_id] is OrderStatus.PENDING:
            pending.append(event)
            # A second event for the same order in this batch finds it decided.
            statuses[event.order_id] = OrderStatus.RESERVED
        else:
            with event_log_context(event):
                logger.info(
                    "order %s is already %s; nothing to reserve",
                    event.order_id,
                    statuses[event.order_id],
                )
    if not pending:
        return []

    stock = await _lock_products(tx, {line.sku for event in pending for line in event.items})
    wanted = [WantedOrder(event.order_id, _quantities_by_sku(event)) for event in pending]
    decisions, left = decide_reservations(stock, wanted)

    decided: dict[UUID, OrderStatus] = {}
    reservations: list[tuple[UUID, str, int]] = []
    emitted: list[Event] = []
    for event, order, decision in zip(pending, wanted, decisions, strict=True):
        with event_log_context(event):
            if not decision.reserved:
                decided[event.order_id] = OrderStatus.OUT_OF_STOCK
                shortages = tuple(
                    StockShortage(sku=s.sku, requested=s.requested, available=s.available)
                    for s in decision.shortages
                )
                emitted.append(
                    caused_by(
                        event,
                        OrderOutOfStock(
                            order_id=event.order_id,
                            customer_id=event.customer_id,
                            email=event.email,
                            shortages=shortages,
                        ),
                    )
                )
                logger.info(
                    "OUT_OF_STOCK order %s: %s",
                    event.order_id,
                    ", ".join(f"{s.sku} wants {s.requested}, has {s.available}" for s in shortages),
                )
                continue
            reservations.extend((event.order_id, sku, qty) for sku, qty in order.wanted.items())
            decided[event.order_id] = OrderStatus.RESERVED
            emitted.append(
                caused_by(
                    event,
                    InventoryReserved(
                        order_id=event.order_id,
                        customer_id=event.customer_id,
                        email=event.email,
                        items=event.items,
                        total=event.total,
                    ),
                )
            )
            logger.info(
                "RESERVED order %s: %s",
                event.order_id,
                ", ".join(f"{sku} x{qty}" for sku, qty in order.wanted.items()),
            )

    taken = {sku: stock[sku] - left[sku] for sku in stock if stock[sku] != left[sku]}
    await tx.execute(
        RECORD_RESERVATIONS,
        list(taken),
        list(taken.values()),
        [order_id for order_id, _, _ in reservations],
        [sku for _, sku, _ in reservations],
        [qty for _, _, qty in reservations],
        list(decided),
        [status.value for status in decided.values()],
    )
    return emitted


# The batch's decisions in one statement, one round trip: stock taken from the products (whose
# rows this transaction locked), what each order took, and every order's new status (as
# orders.set_order_statuses writes it; the trigger still refuses an illegal transition).
RECORD_RESERVATIONS = """
WITH stock AS (
    UPDATE products AS p SET stock_qty = p.stock_qty - taken.qty
    FROM unnest($1::text[], $2::int[]) AS taken (sku, qty)
    WHERE p.sku = taken.sku
), reserved AS (
    INSERT INTO stock_reservations (order_id, sku, qty)
    SELECT * FROM unnest($3::uuid[], $4::text[], $5::int[])
)
UPDATE orders AS o SET status = decided.status
FROM unnest($6::uuid[], $7::text[]) AS decided (id, status)
WHERE o.id = decided.id
"""


RELEASE_RESERVATIONS = """
UPDATE stock_reservations SET status = 'released', released_at = clock_timestamp()
WHERE order_id = ANY($1::uuid[]) AND status = 'reserved'
RETURNING order_id, sku, qty
"""
LOCK_PRODUCTS = """
SELECT sku, stock_qty FROM products
WHERE sku = ANY($1::text[])
ORDER BY sku
FOR NO KEY UPDATE
"""
ADD_STOCK = """
UPDATE products AS p SET stock_qty = p.stock_qty + change.qty
FROM unnest($1::text[], $2::int[]) AS change (sku, qty)
WHERE p.sku = change.sku
"""


async def release_stock(
    events: Sequence[PaymentFailed | OrderCancelled], tx: Connection
) -> Sequence[Event]:
    """Put back what was reserved for orders whose payment failed or that were cancelled, once.
    The order's row lock comes first, as in reserve_stock: an order cancelled while it was being
    reserved is released only after its reservation committed, and one cancelled before finds
    nothing reserved, as reserve_stock will not reserve a cancelled order."""
    order_ids = [event.order_id for event in events]
    await lock_orders(tx, order_ids)
    released = await tx.fetch(RELEASE_RESERVATIONS, order_ids)
    by_order: dict[UUID, list[StockLine]] = {}
    back: Counter[str] = Counter()
    for row in released:
        by_order.setdefault(row["order_id"], []).append(StockLine(sku=row["sku"], qty=row["qty"]))
        back[row["sku"]] += row["qty"]
    if back:
        await _lock_products(tx, back)
        await _add_stock(tx, back)

    # Each order once, answering the first of its events in the batch.
    first_events: dict[UUID, PaymentFailed | OrderCancelled] = {}
    for event in events:
        first_events.setdefault(event.order_id, event)
    emitted: list[Event] = []
    for order_id, event in first_events.items():
        with event_log_context(event):
            lines = by_order.get(order_id)
            if not lines:
                logger.info("order %s holds no reserved stock; nothing to release", order_id)
                continue
            items = tuple(sorted(lines, key=_sku))
            emitted.append(caused_by(event, InventoryReleased(order_id=order_id, items=items)))
            logger.info(
                "RELEASED order %s: %s",
                order_id,
                ", ".join(f"{line.sku} x{line.qty}" for line in items),
            )
    return emitted


async def _lock_products(tx: Connection, skus: Iterable[str]) -> dict[str, int]:
    """Lock the products' rows and return their stock. Rows are locked in SKU order, the same
    order in every transaction, so two that share products wait for each other instead of
    deadlocking. NO KEY UPDATE, because only the stock changes: it does not conflict with the KEY
    SHARE locks that foreign keys to products (the API inserting order_items) take, which would
    otherwise deadlock with us."""
    rows = await tx.fetch(LOCK_PRODUCTS, sorted(set(skus)))
    return {row["sku"]: row["stock_qty"] for row in rows}


async def _add_stock(tx: Connection, change_by_sku: Mapping[str, int]) -> None:
    """Change the stock of products whose rows this transaction has locked."""
    await tx.execute(
        ADD_STOCK,
        list(change_by_sku),
        list(change_by_sku.values()),
    )


def _quantities_by_sku(event: OrderPlaced) -> dict[str, int]:
    """The order's quantity of each product, in SKU order (an event may name a SKU twice)."""
    wanted: Counter[str] = Counter()
    for line in event.items:
        wanted[line.sku] += line.qty
    return dict(sorted(wanted.items()))


def _sku(line: StockLine) -> str:
    return line.sku
