"""The API's process under slow paths and overload, as a real uvicorn server against this run's
database: past API_LIMIT_CONCURRENCY it answers 503 at once instead of taking on more work; and a
client that gave up waiting for `POST /orders` and sends it again with the same Idempotency-Key
gets the one order, whether the first request went on to store it or was cancelled by
API_STATEMENT_TIMEOUT. The slow paths are made by holding a product's row lock, which an order of
that product waits for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest

from tests.support.api import one_line_order
from tests.support.environment import TestEnvironment
from tests.support.locks import product_locked, sessions_waiting_for_a_lock
from tests.support.processes import free_port
from tests.support.products import NewProduct
from tests.support.system import start_service
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

RunningApi = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture
def running_api(session_env: TestEnvironment) -> RunningApi:
    """Starts an API process with some settings of the test's own; yields its base URL."""

    @asynccontextmanager
    async def run(**settings: str) -> AsyncIterator[str]:
        port = free_port()
        environ = session_env.environ(API_PORT=str(port), **settings)
        process = await start_service("api", environ, f"api-overload-{port}")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            # Its exit code is not 0: uvicorn re-raises the SIGTERM it handled.
            await process.stop()

    return run


async def orders_of(pool: asyncpg.Pool, sku: str) -> list[UUID]:
    rows = await pool.fetch("SELECT order_id FROM order_items WHERE sku = $1", sku)
    return [row["order_id"] for row in rows]


def waiting_for_the_lock(pool: asyncpg.Pool, count: int) -> Callable[[], Awaitable[bool]]:
    """A probe: whether exactly `count` sessions wait for a lock."""

    async def probe() -> bool:
        return await sessions_waiting_for_a_lock(pool) == count

    return probe


async def test_past_its_concurrency_limit_the_api_answers_503_at_once(
    running_api: RunningApi, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(stock=5)
    async with (
        running_api(API_LIMIT_CONCURRENCY="3") as url,
        httpx.AsyncClient(base_url=url, timeout=2) as newcomer,
    ):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            slow: list[asyncio.Task[httpx.Response]] = []
            try:
                async with product_locked(pool, sku):
                    # Two orders in progress, each on a connection of its own, waiting for the
                    # lock.
                    slow = [
                        asyncio.create_task(client.post("/orders", json=one_line_order(sku)))
                        for _ in range(2)
                    ]
                    await wait_until(
                        waiting_for_the_lock(pool, 2), what="two orders to wait for the lock"
                    )
                    # A third connection reaches the limit (uvicorn counts its own): refused at
                    # once, without reaching the app, whatever it asks for.
                    over = await newcomer.get("/docs")
            finally:
                # The lock is released: the two orders go through.
                placed = await asyncio.gather(*slow)
        # Their connections closed (uvicorn counts idle keep-alive connections too), there is
        # room again.
        after = await wait_until(
            lambda: _served(newcomer, "/docs"), deadline=5, what="room for a new connection"
        )

    assert over.status_code == 503
    assert [response.status_code for response in placed] == [201, 201]
    assert after.status_code == 200, "the limit is on work in progress, not a quota"


async def _served(client: httpx.AsyncClient, path: str) -> httpx.Response | None:
    response = await client.get(path)
    return response if response.status_code == 200 else None


@pytest.mark.parametrize(
    "first_request",
    ["stored after the client left", "cancelled by the statement timeout"],
)
async def test_a_client_that_gave_up_and_retries_with_the_same_key_gets_the_one_order(
    running_api: RunningApi, pool: asyncpg.Pool, new_product: NewProduct, first_request: str
) -> None:
    sku = await new_product(stock=5)
    body, key = one_line_order(sku), {"Idempotency-Key": str(uuid4())}
    cancelled = first_request == "cancelled by the statement timeout"
    async with (
        running_api(API_STATEMENT_TIMEOUT="1" if cancelled else "30") as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        async with product_locked(pool, sku):
            # The client waits half a second, then gives up (and closes its connection).
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/orders", json=body, headers=key, timeout=0.5)
            if cancelled:
                # Past API_STATEMENT_TIMEOUT the server cancels the insert, lock or no lock.
                await wait_until(
                    waiting_for_the_lock(pool, 0), deadline=5, what="the insert to be cancelled"
                )
            else:
                assert await sessions_waiting_for_a_lock(pool) == 1, "the insert still waits"
        if not cancelled:
            # Released: the first request goes on and stores the order, with nobody to tell.
            await wait_until(lambda: orders_of(pool, sku), what="the first request's order")

        retried = await client.post("/orders", json=body, headers=key)

    stored = await orders_of(pool, sku)
    assert retried.status_code == 201, retried.text
    assert len(stored) == 1, "exactly one order, however the first request ended"
    assert UUID(retried.json()["id"]) == stored[0]
    assert (retried.headers.get("idempotent-replayed") == "true") is not cancelled
