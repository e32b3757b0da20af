"""The schema and its migration, against the real database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from uuid import uuid4

import asyncpg
import pytest

from acme_orders.core.database import (
    migrate,
    migration_files,
    migrations_dir,
    unapplied_migrations,
    wait_for_schema,
)
from acme_orders.core.settings import Settings
from tests.support.environment import TestEnvironment
from tests.support.products import stock_of


async def test_migrate_again_keeps_stock_and_applies_only_the_baseline(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await pool.execute("UPDATE products SET stock_qty = 7 WHERE sku = 'TSHIRT-GRY-S'")
    try:
        applied = await migrate(settings)
        assert applied == ["init.sql"]
        assert await stock_of(pool, "TSHIRT-GRY-S") == 7
    finally:
        await pool.execute("UPDATE products SET stock_qty = 50 WHERE sku = 'TSHIRT-GRY-S'")


async def test_catalogue_has_the_original_products(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(
        "SELECT sku, stock_qty, price FROM products WHERE sku NOT LIKE 'TEST-%'"
    )
    catalogue = {r["sku"]: r for r in rows}
    assert len(catalogue) >= 8
    assert catalogue["TSHIRT-BLK-M"]["price"] > 0
    assert catalogue["TSHIRT-GRY-S"]["stock_qty"] == 50


async def test_stock_can_never_go_negative(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE products SET stock_qty = -1 WHERE sku = 'TSHIRT-BLK-M'")


async def _order_in(pool: asyncpg.Pool, status: str) -> object:
    order_id = uuid4()
    await pool.execute(
        """
        INSERT INTO orders (id, customer_id, email, status, total)
        VALUES ($1, 'C1', 'c1@example.com', $2, 1)
        """,
        order_id,
        status,
    )
    return order_id


@pytest.mark.parametrize(
    ("start", "to"),
    [
        ("reserved", "pending"),
        ("paid", "reserved"),
        ("paid", "payment_failed"),
        ("payment_failed", "paid"),
        ("out_of_stock", "reserved"),
        ("pending", "paid"),
        ("cancelled", "pending"),
        ("cancelled", "reserved"),
        ("cancelled", "paid"),
        ("paid", "cancelled"),
        ("payment_failed", "cancelled"),
        ("out_of_stock", "cancelled"),
    ],
)
async def test_database_refuses_a_status_that_moves_backwards_or_leaves_a_final_one(
    pool: asyncpg.Pool, start: str, to: str
) -> None:
    order_id = await _order_in(pool, start)

    with pytest.raises(asyncpg.CheckViolationError, match=f"cannot move from {start} to {to}"):
        await pool.execute("UPDATE orders SET status = $2 WHERE id = $1", order_id, to)


@pytest.mark.parametrize("start", ["pending", "reserved"])
async def test_an_order_that_is_not_final_can_be_cancelled(pool: asyncpg.Pool, start: str) -> None:
    order_id = await _order_in(pool, start)

    await pool.execute("UPDATE orders SET status = 'cancelled' WHERE id = $1", order_id)

    assert await pool.fetchval("SELECT status FROM orders WHERE id = $1", order_id) == "cancelled"


async def test_status_change_stamps_updated_at(pool: asyncpg.Pool) -> None:
    order_id = await _order_in(pool, "pending")

    await pool.execute("UPDATE orders SET status = 'reserved' WHERE id = $1", order_id)

    row = await pool.fetchrow("SELECT created_at, updated_at FROM orders WHERE id = $1", order_id)
    assert row is not None
    assert row["updated_at"] > row["created_at"]


async def test_a_migrated_database_lacks_no_migration(fresh_pool: asyncpg.Pool) -> None:
    async with fresh_pool.acquire() as conn:
        assert await unapplied_migrations(conn) == []


async def test_a_numbered_migration_not_applied_or_applied_otherwise_is_missing(
    fresh_pool: asyncpg.Pool,
) -> None:
    first, second = [p.name for p in migration_files(migrations_dir())][1:3]
    await fresh_pool.execute("DELETE FROM schema_migrations WHERE filename = $1", first)
    await fresh_pool.execute(
        "UPDATE schema_migrations SET checksum = 'another file' WHERE filename = $1", second
    )
    # The baseline is re-applied by every migrate: whichever version applied it will do.
    await fresh_pool.execute(
        "UPDATE schema_migrations SET checksum = 'older' WHERE filename = 'init.sql'"
    )

    async with fresh_pool.acquire() as conn:
        assert await unapplied_migrations(conn) == [first, second]


async def test_an_empty_database_lacks_every_migration(fresh_pool: asyncpg.Pool) -> None:
    await fresh_pool.execute("DROP TABLE schema_migrations")

    async with fresh_pool.acquire() as conn:
        assert await unapplied_migrations(conn) == [
            p.name for p in migration_files(migrations_dir())
        ]


async def test_wait_for_schema_returns_once_migrate_has_run(fresh_env: TestEnvironment) -> None:
    settings = fresh_env.settings()
    last = migration_files(migrations_dir())[-1].name
    conn = await asyncpg.connect(fresh_env.database_url)
    try:
        await conn.execute("DELETE FROM schema_migrations WHERE filename = $1", last)
    finally:
        await conn.close()
    waiting = asyncio.create_task(wait_for_schema(settings, poll_interval=0.05))
    try:
        # Still waiting after several polls: the schema lacks the last migration.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiting), timeout=0.5)

        assert await migrate(settings) == ["init.sql", last]
        await asyncio.wait_for(waiting, timeout=10)
    finally:
        waiting.cancel()


def test_wait_for_schema_gives_up_after_its_timeout_with_exit_code_1() -> None:
    # Nothing listens on port 1: the database never answers.
    result = subprocess.run(
        [sys.executable, "-m", "acme_orders", "wait-for-schema", "--timeout", "1"],
        env={**os.environ, "DATABASE_URL": "postgresql://acme_app:x@127.0.0.1:1/acme"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 1
    assert "database not reachable" in result.stderr
    assert "still not up to date after 1s" in result.stderr
