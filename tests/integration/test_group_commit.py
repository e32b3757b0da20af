"""The API's group commit against the real database: the orders that arrive while an insert runs
are stored by the next insert together, each answered with its own order or its own error.

Most tests hold their first order's insert still by locking that order's product row (the insert's
foreign-key check waits for the lock), so that the orders after it provably arrive while an insert
runs, and then let it go; for them the API's writer never counts an insert as stalled, which would
start the next beside it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from acme_orders.core.settings import Settings
from acme_orders.order_api import store
from acme_orders.order_api.app import create_app
from acme_orders.order_api.schemas import PlaceOrder
from tests.support.api import app_client
from tests.support.locks import product_locked, sessions_waiting_for_a_lock
from tests.support.products import NewProduct
from tests.support.waiting import wait_until

T = TypeVar("T")


@pytest.fixture
async def app(settings: Settings) -> FastAPI:
    update = {
        "auth_disabled": True,
        "rate_limit_orders_per_second": 0,
        "rate_limit_reads_per_second": 0,
    }
    return create_app(settings.model_copy(update=update))


@pytest.fixture
async def api(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(app) as client:
        yield client


@pytest.fixture
async def held_api(app: FastAPI, api: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    """The API, with a writer for which no insert stalls: a held insert holds every order after
    it, as these tests need."""
    writer = store.OrderWriter(
        app.state.pool, max_batch=64, in_flight=1, most_in_flight=8, stalled_after=3600
    )
    app.state.order_writer = writer
    try:
        yield api
    finally:
        await writer.close()


def body(*skus: str, qty: int = 1, customer: str = "G1") -> dict[str, Any]:
    return {
        "customer_id": customer,
        "email": "g1@example.com",
        "items": [{"sku": sku, "qty": qty} for sku in skus],
    }


def inserts() -> tuple[float, float]:
    """(statements, orders) the API's group commit has run so far, in this process."""
    count = REGISTRY.get_sample_value("acme_api_orders_per_insert_count") or 0.0
    total = REGISTRY.get_sample_value("acme_api_orders_per_insert_sum") or 0.0
    return count, total


def inserts_since(before: tuple[float, float]) -> tuple[float, float]:
    """(statements, orders) of the API's group commit since `before` (an inserts())."""
    now = inserts()
    return now[0] - before[0], now[1] - before[1]


async def sent_behind_a_held_insert(
    pool: asyncpg.Pool,
    app: FastAPI,
    api: httpx.AsyncClient,
    held: str,
    sends: Sequence[Awaitable[T]],
) -> list[asyncio.Future[T]]:
    """An order of `held` sent, its insert waiting on the product's row lock; `sends` started
    while it waits, until all of them wait for that insert to end; then the lock let go. The
    futures of `sends`, in their order."""
    async with product_locked(pool, held):
        first = asyncio.ensure_future(api.post("/orders", json=body(held)))
        await wait_until(
            lambda: sessions_waiting_for_a_lock(pool),
            what="the first insert to wait for the product's row lock",
        )
        later: list[asyncio.Future[T]] = [asyncio.ensure_future(send) for send in sends]
        await queued(app, len(later))
    assert (await first).status_code == 201
    return later


async def queued(app: FastAPI, count: int) -> None:
    writer: store.OrderWriter = app.state.order_writer
    await wait_until(
        lambda: asyncio.sleep(0, writer.waiting == count),
        what=f"{count} orders waiting for the insert under way",
    )


async def stored(pool: asyncpg.Pool, order_id: str) -> tuple[int, int, int]:
    """(orders, lines, outbox rows) stored for the order."""
    row = await pool.fetchrow(
        """
        SELECT (SELECT count(*) FROM orders WHERE id = $1),
               (SELECT count(*) FROM order_items WHERE order_id = $1),
               (SELECT count(*) FROM event_outbox WHERE order_id = $1)
        """,
        UUID(order_id),
    )
    assert row is not None
    return row[0], row[1], row[2]


async def test_orders_that_arrive_while_an_insert_runs_are_stored_by_one_statement_each_its_own(
    held_api: httpx.AsyncClient, app: FastAPI, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    held, plenty, other = [await new_product(stock=100) for _ in range(3)]
    before = inserts()

    later = await sent_behind_a_held_insert(
        pool,
        app,
        held_api,
        held,
        [held_api.post("/orders", json=body(plenty, other, qty=n % 3 + 1)) for n in range(20)],
    )

    responses = await asyncio.gather(*later)
    assert [r.status_code for r in responses] == [201] * 20
    orders = [r.json() for r in responses]
    assert len({order["id"] for order in orders}) == 20
    for n, order in enumerate(orders):
        assert [line["qty"] for line in order["items"]] == [n % 3 + 1] * 2
        assert await stored(pool, order["id"]) == (1, 2, 1)
    # The held order alone, then the twenty that came while it ran: two statements, two commits.
    assert inserts_since(before) == (2, 21)


async def test_an_order_whose_price_changed_is_priced_again_and_its_neighbours_are_stored(
    held_api: httpx.AsyncClient, app: FastAPI, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    held = await new_product(stock=10)
    repriced = await new_product(stock=10)
    kept = await new_product(stock=10)
    # The price book learns the old price, then the product's price changes under it.
    assert (await held_api.post("/orders", json=body(repriced))).json()["total"] == "10.00"
    await pool.execute("UPDATE products SET price = 12.50 WHERE sku = $1", repriced)
    before = inserts()

    later = await sent_behind_a_held_insert(
        pool,
        app,
        held_api,
        held,
        [held_api.post("/orders", json=body(sku, qty=2)) for sku in (kept, repriced, kept)],
    )

    responses = await asyncio.gather(*later)
    assert [r.status_code for r in responses] == [201] * 3
    assert [r.json()["total"] for r in responses] == ["20.00", "25.00", "20.00"]
    # The held order; the three (of which the repriced one stored nothing); it again, alone.
    assert inserts_since(before) == (3, 5)


async def test_one_idempotency_key_twice_in_one_insert_makes_one_order_and_refuses_a_different_body(
    held_api: httpx.AsyncClient, app: FastAPI, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    held = await new_product(stock=10)
    sku = await new_product(stock=10)
    retried, reused = str(uuid4()), str(uuid4())

    sends = [
        (retried, body(sku)),
        (retried, body(sku)),
        (reused, body(sku, customer="G2")),
        (reused, body(sku, customer="G3")),
        (None, body(sku)),
    ]
    later = await sent_behind_a_held_insert(
        pool,
        app,
        held_api,
        held,
        [
            held_api.post("/orders", json=sent, headers={"Idempotency-Key": key} if key else {})
            for key, sent in sends
        ],
    )

    first, again, one, other, plain = await asyncio.gather(*later)
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.json()["id"] == again.json()["id"]
    assert {first.headers.get("Idempotent-Replayed"), again.headers.get("Idempotent-Replayed")} == {
        None,
        "true",
    }
    assert sorted((one.status_code, other.status_code)) == [201, 422]
    refused = one if one.status_code == 422 else other
    assert "already used with a different request" in refused.json()["detail"]
    assert plain.status_code == 201
    assert await pool.fetchval("SELECT count(*) FROM order_items WHERE sku = $1", sku) == 3


@pytest.fixture
async def refused_sku(pool: asyncpg.Pool, new_product: NewProduct) -> AsyncIterator[str]:
    """A product whose order lines the database refuses (a trigger of this test's own raises):
    an error that is one order's, not an outage."""
    sku = await new_product(stock=10)
    name = f"refuse_{sku.lower().replace('-', '_')}"
    await pool.execute(
        f"""
        CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'lines of % are refused', NEW.sku USING ERRCODE = 'check_violation';
        END $$;
        CREATE TRIGGER {name} BEFORE INSERT ON order_items
            FOR EACH ROW WHEN (NEW.sku = '{sku}') EXECUTE FUNCTION {name}();
        """
    )
    try:
        yield sku
    finally:
        await pool.execute(f"DROP TRIGGER {name} ON order_items; DROP FUNCTION {name}();")


async def test_an_order_the_database_refuses_fails_alone_and_its_neighbours_are_stored(
    held_api: httpx.AsyncClient,
    app: FastAPI,
    pool: asyncpg.Pool,
    new_product: NewProduct,
    refused_sku: str,
) -> None:
    held = await new_product(stock=10)
    sku = await new_product(stock=10)
    writer: store.OrderWriter = app.state.order_writer
    prices: store.PriceBook = app.state.price_book

    # Placed in-process without the HTTP layer, so that the refused order's error is seen as it
    # is (the API answers it 500, as any error that is not an outage).
    def place(*skus: str) -> Awaitable[store.PlacedOrder]:
        return store.place_order(writer, prices, PlaceOrder.model_validate(body(*skus)))

    later = await sent_behind_a_held_insert(
        pool,
        app,
        held_api,
        held,
        [place(*skus) for skus in ((sku,), (refused_sku,), (sku,), (sku, refused_sku))],
    )
    results = await asyncio.gather(*later, return_exceptions=True)

    good, bad, also_good, also_bad = results
    assert isinstance(bad, asyncpg.CheckViolationError)
    assert isinstance(also_bad, asyncpg.CheckViolationError)
    for placed in (good, also_good):
        assert isinstance(placed, store.PlacedOrder)
        assert placed.order.total == Decimal("10.00")
        assert await stored(pool, str(placed.order.id)) == (1, 1, 1)
    assert await pool.fetchval("SELECT count(*) FROM order_items WHERE sku = $1", sku) == 2
    assert await pool.fetchval("SELECT count(*) FROM order_items WHERE sku = $1", refused_sku) == 0


async def test_an_order_waiting_for_a_lock_does_not_hold_up_the_orders_after_it(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    locked = await new_product(stock=10)
    free = await new_product(stock=10)

    async with product_locked(pool, locked):
        stuck = asyncio.ensure_future(api.post("/orders", json=body(locked)))
        await wait_until(
            lambda: sessions_waiting_for_a_lock(pool), what="the order to wait for the lock"
        )
        # The API's insert of the stuck order counts as stalled after 0.1 s: these go into an
        # insert beside it, and are stored while it still waits.
        others = await asyncio.gather(*(api.post("/orders", json=body(free)) for _ in range(5)))
        assert [response.status_code for response in others] == [201] * 5
        assert not stuck.done()

    assert (await stuck).status_code == 201
