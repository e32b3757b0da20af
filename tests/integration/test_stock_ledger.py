"""The stock ledger (db/010_stock_ledger.sql) and `acme-orders stock add`, against the real
PostgreSQL: what the audit holds each product's stock to."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from uuid import uuid4

import asyncpg
import pytest

from acme_orders.core.database import migrations_dir
from acme_orders.ops import audit
from acme_orders.ops.stock_ledger import StockAddRefusedError, add_stock
from tests.support.environment import TestEnvironment
from tests.support.processes import acme_orders
from tests.support.products import add_product, stock_of

LEDGER = "SELECT reason, qty FROM stock_ledger WHERE sku = $1 ORDER BY id"


async def stock_findings(pool: asyncpg.Pool, env: TestEnvironment) -> list[audit.Finding]:
    _, findings = await audit.check_database(pool, env.settings(), timedelta(0), limit=10)
    return [f for f in findings if f.kind.startswith("stock_")]


async def test_a_new_product_starts_with_the_stock_it_is_created_with(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool
) -> None:
    sku = await add_product(fresh_pool, stock=12)

    assert [tuple(r) for r in await fresh_pool.fetch(LEDGER, sku)] == [("starting_stock", 12)]
    # The catalogue too, recorded when 010 was applied to the fresh database.
    assert [tuple(r) for r in await fresh_pool.fetch(LEDGER, "TSHIRT-GRY-S")] == [
        ("starting_stock", 50)
    ]
    assert await stock_findings(fresh_pool, fresh_env) == []


async def test_010_starts_a_product_that_orders_moved_with_what_they_still_hold(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool
) -> None:
    """A database from before 010: orders have taken stock (some given back). The migration's
    record of its starting stock makes the books balance."""
    sku = await add_product(fresh_pool, stock=10)
    held, released = uuid4(), uuid4()
    async with fresh_pool.acquire() as conn, conn.transaction():
        # As before 010: no ledger; one order holds 3, another took 2 and gave them back.
        await conn.execute("DELETE FROM stock_ledger")
        for order_id, status in ((held, "paid"), (released, "payment_failed")):
            await conn.execute(
                "INSERT INTO orders (id, customer_id, email, status, total) "
                "VALUES ($1, 'C1', 'c1@example.com', $2, 1)",
                order_id,
                status,
            )
        await conn.execute(
            "INSERT INTO stock_reservations (order_id, sku, qty, status) "
            "VALUES ($1, $3, 3, 'reserved'), ($2, $3, 2, 'released')",
            held,
            released,
            sku,
        )
        await conn.execute("UPDATE products SET stock_qty = 7 WHERE sku = $1", sku)

        migration = (migrations_dir() / "010_stock_ledger.sql").read_text(encoding="utf-8")
        await conn.execute(migration[migration.index("LOCK TABLE products") :])

    assert [tuple(r) for r in await fresh_pool.fetch(LEDGER, sku)] == [("starting_stock", 10)]
    assert await stock_findings(fresh_pool, fresh_env) == []


async def test_stock_added_is_in_the_stock_and_the_ledger(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool
) -> None:
    sku = await add_product(fresh_pool, stock=4)

    async def add(qty: int) -> None:
        async with fresh_pool.acquire() as conn, conn.transaction():
            await add_stock(conn, sku, qty)

    # At once, from several connections: each waits for the product's row lock.
    await asyncio.gather(*(add(n) for n in (1, 2, 3, 4)))

    assert await stock_of(fresh_pool, sku) == 14
    ledger = await fresh_pool.fetch(LEDGER, sku)
    assert sorted(tuple(r) for r in ledger) == [
        ("operator_added", 1),
        ("operator_added", 2),
        ("operator_added", 3),
        ("operator_added", 4),
        ("starting_stock", 4),
    ]
    assert await stock_findings(fresh_pool, fresh_env) == []


@pytest.mark.parametrize(
    ("sku", "qty", "message"),
    [
        ("NO-SUCH-SKU", 1, "no product has SKU 'NO-SUCH-SKU'"),
        (None, 0, "the quantity to add must be at least 1, not 0"),
        (None, -3, "the quantity to add must be at least 1, not -3"),
        (None, 1_000_001, "the quantity to add must be at most 1000000, not 1000001"),
    ],
)
async def test_stock_add_refuses_an_unknown_sku_or_a_bad_quantity(
    fresh_env: TestEnvironment,
    fresh_pool: asyncpg.Pool,
    sku: str | None,
    qty: int,
    message: str,
) -> None:
    product = await add_product(fresh_pool, stock=4)

    async with fresh_pool.acquire() as conn, conn.transaction():
        with pytest.raises(StockAddRefusedError, match=message):
            await add_stock(conn, sku or product, qty)
    result = await acme_orders(fresh_env.environ(), "stock", "add", sku or product, str(qty))

    assert result.returncode == 1
    assert message in result.stderr
    assert result.stdout == ""
    assert await stock_of(fresh_pool, product) == 4
    assert len(await fresh_pool.fetch(LEDGER, product)) == 1
