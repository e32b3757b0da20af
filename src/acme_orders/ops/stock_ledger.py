"""Stock an operator adds (`acme-orders stock add SKU QTY`), recorded in stock_ledger
(db/010_stock_ledger.sql) in the same transaction as the change, so that the reconciliation audit
knows of it: stock changes only through orders, their releases, and this."""

from __future__ import annotations

from dataclasses import dataclass

from acme_orders.core.database import Connection

# The most one `stock add` takes: a typo's extra zeros are refused, not stocked. stock_qty is an
# integer column (at most 2**31 - 1).
MAX_STOCK_ADDED = 1_000_000

# The product's row locked as inventory locks it (inventory/stock.py: FOR NO KEY UPDATE, which
# does not conflict with the KEY SHARE locks of order_items' foreign key): one row, so no lock
# order to keep.
LOCK_PRODUCT = "SELECT stock_qty FROM products WHERE sku = $1 FOR NO KEY UPDATE"
ADD_TO_STOCK = """
WITH recorded AS (
    INSERT INTO stock_ledger (sku, qty, reason) VALUES ($1, $2, 'operator_added')
)
UPDATE products SET stock_qty = stock_qty + $2 WHERE sku = $1
RETURNING stock_qty
"""


class StockAddRefusedError(ValueError):
    """An unknown SKU, or a quantity that is not a positive number within MAX_STOCK_ADDED."""


@dataclass(frozen=True, slots=True)
class StockAdded:
    sku: str
    added: int
    before: int
    after: int


def check_quantity(qty: int) -> None:
    if qty < 1:
        raise StockAddRefusedError(f"the quantity to add must be at least 1, not {qty}")
    if qty > MAX_STOCK_ADDED:
        raise StockAddRefusedError(
            f"the quantity to add must be at most {MAX_STOCK_ADDED}, not {qty}"
        )


async def add_stock(tx: Connection, sku: str, qty: int) -> StockAdded:
    """Add `qty` to the product's stock and record it in the ledger, in the transaction `tx`."""
    check_quantity(qty)
    before = await tx.fetchval(LOCK_PRODUCT, sku)
    if before is None:
        raise StockAddRefusedError(f"no product has SKU {sku!r} (GET /products lists them)")
    after: int = await tx.fetchval(ADD_TO_STOCK, sku, qty)
    return StockAdded(sku=sku, added=qty, before=before, after=after)
