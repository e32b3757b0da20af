"""Cancelling an order, against the real database: POST /orders/{id}/cancel (in-process, with real
API keys), the handlers that meet a cancelled order, and the expiry of overdue orders."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest

from acme_orders.core.cancellation import cancel_orders
from acme_orders.core.events import InventoryReserved, OrderCancelled, OrderLine, OrderPlaced
from acme_orders.core.orders import CancelReason
from acme_orders.core.settings import Settings
from acme_orders.inventory.stock import release_stock, reserve_stock
from acme_orders.ops.api_keys import Scope
from acme_orders.payment.charge import charge_orders
from acme_orders.payment.gateway import SimulatedGateway
from acme_orders.publisher.expiry import DUE_ORDERS, expire_due_orders
from tests.support.api import api_client, key_headers
from tests.support.products import NewProduct, stock_of
from tests.support.waiting import wait_until


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    update = {
        "auth_disabled": False,
        "rate_limit_orders_per_second": 0,
        "rate_limit_reads_per_second": 0,
    }
    async with api_client(settings.model_copy(update=update)) as client:
        yield client


async def place(api: httpx.AsyncClient, headers: dict[str, str], sku: str) -> dict[str, Any]:
    body = {"customer_id": "C1", "email": "c1@example.com", "items": [{"sku": sku, "qty": 1}]}
    response = await api.post("/orders", json=body, headers=headers)
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    return order


async def cancellations_of(pool: asyncpg.Pool, order_id: UUID | str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT payload::text FROM event_outbox "
        "WHERE order_id = $1 AND event_type = 'OrderCancelled' ORDER BY id",
        UUID(str(order_id)),
    )
    return [json.loads(row[0]) for row in rows]


async def test_cancelling_an_order_that_is_not_final_answers_it_cancelled_with_one_event(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    headers = await key_headers(pool)
    order = await place(api, headers, await new_product(stock=5))

    response = await api.post(
        f"/orders/{order['id']}/cancel", headers=headers | {"X-Request-ID": "cancel-req-1"}
    )

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert response.json()["items"] == order["items"]
    [event] = await cancellations_of(pool, order["id"])
    assert OrderCancelled.model_validate(event).reason == "requested"
    assert event["correlation_id"] == "cancel-req-1"
    assert event["email"] == "c1@example.com"


async def test_cancelling_a_cancelled_order_again_answers_200_and_changes_nothing(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    headers = await key_headers(pool)
    order = await place(api, headers, await new_product(stock=5))
    first = await api.post(f"/orders/{order['id']}/cancel", headers=headers)

    again = await api.post(f"/orders/{order['id']}/cancel", headers=headers)

    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert len(await cancellations_of(pool, order["id"])) == 1


@pytest.mark.parametrize("final", ["paid", "payment_failed", "out_of_stock"])
async def test_an_order_that_ended_otherwise_is_409_with_its_status_and_keeps_it(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct, final: str
) -> None:
    headers = await key_headers(pool)
    order = await place(api, headers, await new_product(stock=5))
    order_id = UUID(order["id"])
    if final != "out_of_stock":
        await pool.execute("UPDATE orders SET status = 'reserved' WHERE id = $1", order_id)
    await pool.execute("UPDATE orders SET status = $2 WHERE id = $1", order_id, final)

    response = await api.post(f"/orders/{order_id}/cancel", headers=headers)

    assert response.status_code == 409, response.text
    assert response.json()["status"] == final
    assert f"already {final}" in response.json()["detail"]
    assert await pool.fetchval("SELECT status FROM orders WHERE id = $1", order_id) == final
    assert await cancellations_of(pool, order_id) == []


async def test_another_keys_order_or_an_unknown_one_is_404_and_stays_as_it_was(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    # Both made before the API first looks a key up, so that its key cache knows both.
    owner, stranger = await key_headers(pool), await key_headers(pool)
    order = await place(api, owner, await new_product(stock=5))

    theirs = await api.post(f"/orders/{order['id']}/cancel", headers=stranger)
    unknown = await api.post(f"/orders/{uuid4()}/cancel", headers=stranger)

    assert theirs.status_code == 404, theirs.text
    assert unknown.status_code == 404, unknown.text
    assert theirs.json()["detail"] == f"order {order['id']} not found"
    assert (await api.get(f"/orders/{order['id']}", headers=owner)).json()["status"] == "pending"
    assert await cancellations_of(pool, order["id"]) == []


async def test_cancelling_needs_an_orders_write_key(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    owner, admin_key = await key_headers(pool), await key_headers(pool, Scope.ADMIN)
    order = await place(api, owner, await new_product(stock=5))

    nobody = await api.post(f"/orders/{order['id']}/cancel")
    admin = await api.post(f"/orders/{order['id']}/cancel", headers=admin_key)

    assert nobody.status_code == 401
    assert admin.status_code == 403
    assert await cancellations_of(pool, order["id"]) == []


# --- the handlers that meet a cancelled order ---------------------------------------------------


async def placed_order(pool: asyncpg.Pool, sku: str, qty: int) -> OrderPlaced:
    """An order stored as pending, and its OrderPlaced."""
    event = OrderPlaced(
        order_id=uuid4(),
        customer_id="C1",
        email="c1@example.com",
        items=(OrderLine(sku=sku, qty=qty, unit_price=Decimal("10.00")),),
        total=Decimal("10.00") * qty,
    )
    await pool.execute(
        "INSERT INTO orders (id, customer_id, email, total) "
        "VALUES ($1, 'C1', 'c1@example.com', $2)",
        event.order_id,
        event.total,
    )
    return event


async def reserved_order(pool: asyncpg.Pool, sku: str, qty: int) -> InventoryReserved:
    """An order placed and reserved by inventory's handler; the event that asks payment to
    charge it."""
    placed = await placed_order(pool, sku, qty)
    async with pool.acquire() as conn, conn.transaction():
        [reserved] = await reserve_stock([placed], conn)
    assert isinstance(reserved, InventoryReserved)
    return reserved


async def cancel(pool: asyncpg.Pool, order_id: UUID) -> OrderCancelled:
    async with pool.acquire() as conn, conn.transaction():
        await cancel_orders(conn, [order_id], CancelReason.OPERATOR)
    [payload] = await cancellations_of(pool, order_id)
    return OrderCancelled.model_validate(payload)


async def test_a_cancelled_reservation_is_given_back_exactly_once(
    pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(stock=10)
    placed = await reserved_order(pool, sku, 3)
    assert await stock_of(pool, sku) == 7
    cancelled = await cancel(pool, placed.order_id)

    async with pool.acquire() as conn, conn.transaction():
        first = await release_stock([cancelled, cancelled], conn)
    async with pool.acquire() as conn, conn.transaction():
        again = await release_stock([cancelled], conn)

    assert [type(event).__name__ for event in first] == ["InventoryReleased"]
    assert again == []
    assert await stock_of(pool, sku) == 10
    assert (
        await pool.fetchval(
            "SELECT status FROM stock_reservations WHERE order_id = $1", placed.order_id
        )
        == "released"
    )


async def test_an_order_placed_event_arriving_after_the_cancel_reserves_nothing(
    pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(stock=10)
    placed = await placed_order(pool, sku, 3)
    cancelled = await cancel(pool, placed.order_id)
    async with pool.acquire() as conn, conn.transaction():
        # The release may come first: it finds nothing to give back.
        assert await release_stock([cancelled], conn) == []

    async with pool.acquire() as conn, conn.transaction():
        emitted = await reserve_stock([placed], conn)

    assert emitted == []
    assert await stock_of(pool, sku) == 10
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM stock_reservations WHERE order_id = $1", placed.order_id
        )
        == 0
    )


async def test_a_reservation_arriving_after_the_cancel_charges_nothing(
    pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(stock=10)
    reserved = await reserved_order(pool, sku, 1)
    await cancel(pool, reserved.order_id)

    async with pool.acquire() as conn, conn.transaction():
        emitted = await charge_orders([reserved], conn, gateway=SimulatedGateway(1.0))

    assert emitted == []
    assert await pool.fetchval("SELECT status FROM orders WHERE id = $1", reserved.order_id) == (
        "cancelled"
    )
    assert (
        await pool.fetchval("SELECT count(*) FROM payments WHERE order_id = $1", reserved.order_id)
        == 0
    )


async def test_a_cancel_waits_for_a_payment_holding_the_order_and_then_finds_it_paid(
    pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    """The race, one order: payment has locked the order and charges it; a cancel meanwhile
    waits for the lock, then finds the order paid and leaves it paid."""
    sku = await new_product(stock=10)
    reserved = await reserved_order(pool, sku, 1)
    async with pool.acquire() as paying, paying.transaction():
        await charge_orders([reserved], paying, gateway=SimulatedGateway(1.0))
        cancelling = asyncio.create_task(cancel_in_own_transaction(pool, reserved.order_id))

        async def cancel_waits_for_the_lock() -> bool:
            waiting = await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return bool(waiting)

        await wait_until(cancel_waits_for_the_lock, what="the cancel to wait for the order's lock")
        assert not cancelling.done()
    before = await asyncio.wait_for(cancelling, 10)

    assert before == "paid"
    status = await pool.fetchval("SELECT status FROM orders WHERE id = $1", reserved.order_id)
    assert status == "paid"
    assert await cancellations_of(pool, reserved.order_id) == []


async def cancel_in_own_transaction(pool: asyncpg.Pool, order_id: UUID) -> str:
    async with pool.acquire() as conn, conn.transaction():
        before = await cancel_orders(conn, [order_id], CancelReason.OPERATOR)
    return before[order_id].value


# --- the expiry of overdue orders ---------------------------------------------------------------


async def age(pool: asyncpg.Pool, order_ids: list[UUID], seconds: float) -> None:
    """Make orders look placed `seconds` earlier than they were."""
    await pool.execute(
        "UPDATE orders SET created_at = created_at - make_interval(secs => $2) "
        "WHERE id = ANY($1::uuid[])",
        order_ids,
        seconds,
    )


@pytest.fixture
async def expiry_pool(fresh_pool: asyncpg.Pool) -> asyncpg.Pool:
    """A database of the test's own: expiry looks at every order of its database."""
    return fresh_pool


async def test_expiry_cancels_each_overdue_order_once_and_leaves_the_rest(
    expiry_pool: asyncpg.Pool,
) -> None:
    pool = expiry_pool
    overdue = [(await placed_order(pool, "TSHIRT-BLK-M", 1)).order_id for _ in range(5)]
    finished = (await placed_order(pool, "TSHIRT-BLK-M", 1)).order_id
    await pool.execute("UPDATE orders SET status = 'out_of_stock' WHERE id = $1", finished)
    recent = (await placed_order(pool, "TSHIRT-BLK-M", 1)).order_id
    await age(pool, [*overdue, finished], 120)

    # Two publishers at once, as in a deployment of several: together they expire each order once.
    passes = await asyncio.gather(
        *(expire_due_orders(pool, timedelta(seconds=60), 100) for _ in range(2))
    )
    later = await expire_due_orders(pool, timedelta(seconds=60), 100)

    expired = sorted(order for run in passes if run is not None for order in run.expired)
    assert expired == sorted(overdue)
    assert later is not None
    assert later.expired == []
    statuses = {
        row["id"]: row["status"] for row in await pool.fetch("SELECT id, status FROM orders")
    }
    assert {statuses[order] for order in overdue} == {"cancelled"}
    assert statuses[finished] == "out_of_stock"
    assert statuses[recent] == "pending"
    for order in overdue:
        [event] = await cancellations_of(pool, order)
        assert event["reason"] == "timed_out"


async def test_expiry_works_through_a_backlog_in_passes_of_its_batch_size(
    expiry_pool: asyncpg.Pool,
) -> None:
    pool = expiry_pool
    overdue = [(await placed_order(pool, "TSHIRT-BLK-M", 1)).order_id for _ in range(7)]
    await age(pool, overdue, 120)

    sizes = []
    while (run := await expire_due_orders(pool, timedelta(seconds=60), 3)) and run.due:
        sizes.append(len(run.expired))

    assert sizes == [3, 3, 1]
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE status = 'cancelled'") == 7


async def test_a_pass_reads_only_the_orders_that_fell_due_since_the_last_one(
    expiry_pool: asyncpg.Pool,
) -> None:
    """Cheap when nothing is due: with 20,000 finished orders behind its position, a pass's
    query reads the index range after the position, not the table."""
    pool = expiry_pool
    await pool.execute(
        """
        INSERT INTO orders (id, customer_id, email, status, total, created_at)
        SELECT gen_random_uuid(), 'C1', 'c1@example.com', 'out_of_stock', 0,
               clock_timestamp() - interval '1 day' + n * interval '1 ms'
        FROM generate_series(1, 20000) AS n
        """
    )
    await pool.execute("ANALYZE orders")
    # Every order is final, so the first pass starts at the cutoff: it looks at none of them.
    first = await expire_due_orders(pool, timedelta(seconds=60), 50_000)
    assert first is not None
    assert (first.due, first.expired) == (0, [])
    position = await pool.fetchrow("SELECT expired_through, through_id FROM order_expiry")
    assert position is not None

    [plan] = json.loads(
        await pool.fetchval(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {DUE_ORDERS}", *position, timedelta(seconds=60), 500
        )
    )
    scans = list(nodes_of(plan["Plan"]))

    assert not [node for node in scans if node["Node Type"] == "Seq Scan"], scans
    assert sum(node.get("Actual Rows", 0) for node in scans if "Scan" in node["Node Type"]) == 0


def nodes_of(node: dict[str, Any]) -> Any:
    yield node
    for child in node.get("Plans", []):
        yield from nodes_of(child)
