"""The inventory's decisions: reserve an order's stock, or release it."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from acme_orders.database import Connection
from acme_orders.events import (
    Event,
    InventoryReleased,
    InventoryReserved,
    OrderOutOfStock,
    OrderPlaced,
    PaymentFailed,
    StockLine,
    StockShortage,
)
from acme_orders.orders import OrderStatus, lock_order, set_order_status

logger = logging.getLogger(__name__)


async def reserve_stock(event: OrderPlaced, tx: Connection) -> Sequence[Event]:
    """Reserve every line of the order or none of them."""
    status = await lock_order(tx, event.order_id)
    if status is not OrderStatus.PENDING:
        logger.info("order %s is already %s; nothing to reserve", event.order_id, status)
        return []

    lines = sorted(event.items, key=lambda line: line.sku)
    skus = [line.sku for line in lines]
    # Rows are locked in SKU order, the same order for every order, so two orders that share
    # products wait for each other instead of deadlocking. NO KEY UPDATE, because only the stock
    # changes: it does not conflict with the KEY SHARE locks that foreign keys to products (the
    # API inserting order_items) take, which would otherwise deadlock with us.
    stock = {
        r["sku"]: r["stock_qty"]
        for r in await tx.fetch(
            """
            SELECT sku, stock_qty FROM products
            WHERE sku = ANY($1::text[])
            ORDER BY sku
            FOR NO KEY UPDATE
            """,
            skus,
        )
    }
    shortages = [
        StockShortage(sku=line.sku, requested=line.qty, available=stock.get(line.sku, 0))
        for line in lines
        if stock.get(line.sku, 0) < line.qty
    ]
    if shortages:
        await set_order_status(tx, event.order_id, OrderStatus.OUT_OF_STOCK)
        logger.info(
            "OUT_OF_STOCK order %s: %s",
            event.order_id,
            ", ".join(f"{s.sku} wants {s.requested}, has {s.available}" for s in shortages),
        )
        return [
            OrderOutOfStock(
                order_id=event.order_id,
                customer_id=event.customer_id,
                email=event.email,
                shortages=tuple(shortages),
            )
        ]

    quantities = [line.qty for line in lines]
    await tx.execute(
        """
        UPDATE products AS p SET stock_qty = p.stock_qty - wanted.qty
        FROM unnest($1::text[], $2::int[]) AS wanted (sku, qty)
        WHERE p.sku = wanted.sku
        """,
        skus,
        quantities,
    )
    await tx.execute(
        """
        INSERT INTO stock_reservations (order_id, sku, qty)
        SELECT $1, sku, qty FROM unnest($2::text[], $3::int[]) AS wanted (sku, qty)
        """,
        event.order_id,
        skus,
        quantities,
    )
    await set_order_status(tx, event.order_id, OrderStatus.RESERVED)
    logger.info(
        "RESERVED order %s: %s",
        event.order_id,
        ", ".join(f"{line.sku} x{line.qty}" for line in lines),
    )
    return [
        InventoryReserved(
            order_id=event.order_id,
            customer_id=event.customer_id,
            email=event.email,
            items=event.items,
            total=event.total,
        )
    ]


async def release_stock(event: PaymentFailed, tx: Connection) -> Sequence[Event]:
    """Put back what was reserved for an order whose payment failed, once."""
    await lock_order(tx, event.order_id)
    released = await tx.fetch(
        """
        UPDATE stock_reservations SET status = 'released', released_at = clock_timestamp()
        WHERE order_id = $1 AND status = 'reserved'
        RETURNING sku, qty
        """,
        event.order_id,
    )
    if not released:
        logger.info("order %s holds no reserved stock; nothing to release", event.order_id)
        return []
    items = tuple(sorted((StockLine(sku=r["sku"], qty=r["qty"]) for r in released), key=_sku))
    skus = [line.sku for line in items]
    # Row locks in SKU order, as when reserving.
    await tx.execute(
        "SELECT 1 FROM products WHERE sku = ANY($1::text[]) ORDER BY sku FOR NO KEY UPDATE", skus
    )
    await tx.execute(
        """
        UPDATE products AS p SET stock_qty = p.stock_qty + back.qty
        FROM unnest($1::text[], $2::int[]) AS back (sku, qty)
        WHERE p.sku = back.sku
        """,
        skus,
        [line.qty for line in items],
    )
    logger.info(
        "RELEASED order %s: %s",
        event.order_id,
        ", ".join(f"{line.sku} x{line.qty}" for line in items),
    )
    return [InventoryReleased(order_id=event.order_id, items=items)]


def _sku(line: StockLine) -> str:
    return line.sku
