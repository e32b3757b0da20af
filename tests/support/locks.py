"""Slow paths made on purpose: a product row locked by the test, so that placing an order of it
waits (storing its line takes a key-share lock on the product, which FOR UPDATE blocks) until the
test lets go; and how many sessions of the database wait for a lock meanwhile."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg


@asynccontextmanager
async def product_locked(pool: asyncpg.Pool, sku: str) -> AsyncIterator[None]:
    """Hold the product's row FOR UPDATE until the block ends: every order of it waits."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM products WHERE sku = $1 FOR UPDATE", sku)
        yield


async def sessions_waiting_for_a_lock(pool: asyncpg.Pool) -> int:
    """Sessions of this database waiting for a lock (an order behind product_locked, say)."""
    waiting: int = await pool.fetchval(
        """
        SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND wait_event_type = 'Lock'
        """
    )
    return waiting
