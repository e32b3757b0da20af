"""The API bounds how long a request waits on the database, in-process against the real one: for a
connection of its pool (API_DB_ACQUIRE_TIMEOUT) and for each statement (API_STATEMENT_TIMEOUT).
Past either bound the answer is 503 with Retry-After, at once, and nothing is stored; the slow
paths are made by holding a product's row lock, which an order of that product waits for."""

from __future__ import annotations

import asyncio
import time
from uuid import uuid4

import asyncpg
import httpx

from acme_orders.core.settings import Settings
from tests.support.api import api_client, one_line_order
from tests.support.locks import product_locked, sessions_waiting_for_a_lock
from tests.support.products import NewProduct
from tests.support.waiting import wait_until

# About bounds, not keys: no key and no rate limits, as the quick start.
OPEN_API = {
    "auth_disabled": True,
    "rate_limit_orders_per_second": 0,
    "rate_limit_reads_per_second": 0,
}


async def orders_of(pool: asyncpg.Pool, sku: str) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM order_items WHERE sku = $1", sku)
    return count


async def test_a_request_that_finds_every_connection_taken_is_503_within_the_acquire_timeout(
    settings: Settings, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(stock=5)
    bounded = settings.model_copy(
        update={**OPEN_API, "db_pool_size": 1, "api_db_acquire_timeout": 0.5}
    )
    async with api_client(bounded) as api:
        slow: asyncio.Task[httpx.Response] | None = None
        try:
            async with product_locked(pool, sku):
                # The pool's one connection, taken by an order that waits for the product's lock.
                slow = asyncio.create_task(api.post("/orders", json=one_line_order(sku)))
                await wait_until(
                    lambda: sessions_waiting_for_a_lock(pool), what="the order to wait"
                )
                started = time.monotonic()
                async with asyncio.timeout(5):
                    busy = await api.get("/products")
                waited = time.monotonic() - started
        finally:
            # Once the lock is released the slow order goes through: wait for it, so that it
            # ends before the app does.
            if slow is not None:
                async with asyncio.timeout(10):
                    placed = await slow

    assert busy.status_code == 503, busy.text
    assert busy.headers["retry-after"] == "1"
    assert "Idempotency-Key" in busy.json()["detail"]
    assert 0.4 <= waited < 2.0, f"answered after {waited:.2f}s"
    assert placed.status_code == 201, "the slow order itself went through once the lock was freed"


async def test_a_statement_that_waits_past_the_statement_timeout_is_cancelled_and_answered_503(
    settings: Settings, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(stock=5)
    bounded = settings.model_copy(update={**OPEN_API, "api_statement_timeout": 0.5})
    async with api_client(bounded) as api, product_locked(pool, sku):
        started = time.monotonic()
        async with asyncio.timeout(5):
            refused = await api.post(
                "/orders", json=one_line_order(sku), headers={"Idempotency-Key": str(uuid4())}
            )
        waited = time.monotonic() - started
        # Still holding the lock: the cancelled statement no longer waits behind it.
        still_waiting = await sessions_waiting_for_a_lock(pool)

    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    assert "Idempotency-Key" in refused.json()["detail"]
    assert 0.4 <= waited < 3.0, f"answered after {waited:.2f}s"
    assert still_waiting == 0
    assert await orders_of(pool, sku) == 0, "a cancelled statement stores nothing"
