"""The queries the publisher runs again and again read orders through orders_created_at_idx, a
range of it, not the whole table: their cost must not grow with the orders' history."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import asyncpg

from acme_orders.core.orders import RECENT_ORDERS_BY_STATUS
from acme_orders.publisher.expiry import DUE_ORDERS


async def plan_of(pool: asyncpg.Pool, statement: str, *args: object) -> str:
    async with pool.acquire() as conn, conn.transaction():
        # A test database's orders table is small enough for a sequential scan to be cheaper:
        # ruled out here, what is left is whether the index can bound the scan at all.
        await conn.execute("SET LOCAL enable_seqscan = off")
        rows = await conn.fetch(f"EXPLAIN {statement}", *args)
    return "\n".join(row[0] for row in rows)


async def test_the_orders_gauge_reads_only_the_window_through_the_index(
    pool: asyncpg.Pool,
) -> None:
    plan = await plan_of(pool, RECENT_ORDERS_BY_STATUS, timedelta(minutes=5))

    assert "orders_created_at_idx" in plan, plan
    assert "Index Cond: (created_at >" in plan, plan


async def test_an_expiry_pass_reads_only_the_orders_between_its_position_and_the_cutoff(
    pool: asyncpg.Pool,
) -> None:
    position = await pool.fetchval("SELECT now() - interval '1 hour'")
    plan = await plan_of(pool, DUE_ORDERS, position, UUID(int=0), timedelta(minutes=15), 100)

    assert "orders_created_at_idx" in plan, plan
    index_condition = next(line for line in plan.splitlines() if "Index Cond" in line)
    assert "created_at <=" in index_condition, plan
