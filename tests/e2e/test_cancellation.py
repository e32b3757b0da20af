"""Cancellation and expiry through the real processes: cancels racing the pipeline, an
order.placed that arrives after its cancel, and orders that time out while payment is down."""

from __future__ import annotations

import asyncio
import functools
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pytest

from acme_orders.core.orders import FINAL_STATUSES
from tests.support.products import NewProduct, add_product, stock_of
from tests.support.system import System, start_service
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

# The e-mail each final status calls for.
NOTIFICATION_OF = {
    "paid": "order_paid",
    "payment_failed": "payment_failed",
    "out_of_stock": "out_of_stock",
    "cancelled": "order_cancelled",
}


@pytest.fixture
def new_product(system: System) -> NewProduct:
    return functools.partial(add_product, system.pool)


async def cancel(system: System, order_id: str) -> tuple[int, dict[str, Any]]:
    response = await system.client.post(f"/orders/{order_id}/cancel")
    assert response.status_code in (200, 409), response.text
    return response.status_code, response.json()


async def wait_until_books_close(system: System, order_ids: list[UUID]) -> dict[UUID, str]:
    """Until every order is final, its events published, its e-mail stored and no cancelled order
    holds stock; returns the final statuses."""

    async def closed() -> dict[UUID, str] | None:
        row = await system.pool.fetchrow(
            """
            SELECT (SELECT count(*) FROM orders
                    WHERE id = ANY($1::uuid[]) AND status <> ALL($2::text[])) AS unfinished,
                   (SELECT count(*) FROM event_outbox
                    WHERE order_id = ANY($1::uuid[]) AND status = 'NEW') AS unsent,
                   (SELECT count(DISTINCT order_id) FROM notifications
                    WHERE order_id = ANY($1::uuid[])) AS notified,
                   (SELECT count(*) FROM stock_reservations AS r
                    JOIN orders AS o ON o.id = r.order_id
                    WHERE o.id = ANY($1::uuid[]) AND o.status = 'cancelled'
                      AND r.status = 'reserved') AS held_by_cancelled
            """,
            order_ids,
            list(FINAL_STATUSES),
        )
        assert row is not None
        if row["unfinished"] or row["unsent"] or row["held_by_cancelled"]:
            return None
        if row["notified"] < len(order_ids):
            return None
        rows = await system.pool.fetch(
            "SELECT id, status FROM orders WHERE id = ANY($1::uuid[])", order_ids
        )
        return {r["id"]: r["status"] for r in rows}

    return await wait_until(closed, deadline=60, what="every order to be final and settled")


async def books_of(system: System, order_ids: list[UUID]) -> dict[str, Any]:
    """Per order: its notifications' kinds, its reservations' statuses, its payments and
    OrderCancelled events."""
    pool = system.pool
    notifications: dict[UUID, list[str]] = {}
    for r in await pool.fetch(
        "SELECT order_id, kind FROM notifications WHERE order_id = ANY($1::uuid[])", order_ids
    ):
        notifications.setdefault(r["order_id"], []).append(r["kind"])
    reservations: dict[UUID, set[str]] = {}
    for r in await pool.fetch(
        "SELECT order_id, status FROM stock_reservations WHERE order_id = ANY($1::uuid[])",
        order_ids,
    ):
        reservations.setdefault(r["order_id"], set()).add(r["status"])
    paid = {
        r["order_id"]
        for r in await pool.fetch(
            "SELECT order_id FROM payments WHERE order_id = ANY($1::uuid[])", order_ids
        )
    }
    cancellations = Counter(
        r["order_id"]
        for r in await pool.fetch(
            "SELECT order_id FROM event_outbox "
            "WHERE order_id = ANY($1::uuid[]) AND event_type = 'OrderCancelled'",
            order_ids,
        )
    )
    return {
        "notifications": notifications,
        "reservations": reservations,
        "charged": paid,
        "cancellations": cancellations,
    }


@pytest.fixture
async def slow_gateway(system: System) -> AsyncIterator[None]:
    """A gateway that takes 20 ms a charge, as a real one takes time: payment holds an order's
    row lock that long, and a reserved order waits in payment's queue for longer."""
    await system.replace("payment", PAYMENT_GATEWAY_LATENCY_MS="20")
    try:
        yield
    finally:
        await system.replace("payment")


async def test_cancels_racing_the_pipeline_end_cancelled_uncharged_or_409_never_both(
    system: System, new_product: NewProduct, slow_gateway: None
) -> None:
    """150 orders for 100 units, placed 5 ms apart; each is cancelled a random moment of up to
    60 ms after it was accepted, while inventory reserves and payment charges. Each cancel is
    answered 200 (and the order ends cancelled, uncharged, its stock back) or 409 with the status
    the order ends with. (A cancel before the reservation: the test after this one.)"""
    sku = await new_product(stock=100)
    rng = random.Random(15)

    async def place_then_cancel(n: int) -> tuple[UUID, tuple[int, dict[str, Any]]]:
        await asyncio.sleep(n * 0.005)
        order = await system.place_order([(sku, 1)])
        await asyncio.sleep(rng.uniform(0, 0.06))
        return UUID(order["id"]), await cancel(system, order["id"])

    answers = dict(await asyncio.gather(*(place_then_cancel(n) for n in range(150))))
    order_ids = list(answers)
    final = await wait_until_books_close(system, order_ids)
    books = await books_of(system, order_ids)

    for order_id, (code, body) in answers.items():
        status = final[order_id]
        if code == 200:
            assert status == "cancelled", order_id
            assert body["status"] == "cancelled"
            assert order_id not in books["charged"], f"cancelled order {order_id} was charged"
            assert books["reservations"].get(order_id, {"released"}) == {"released"}
            assert books["cancellations"][order_id] == 1
        else:
            assert status in ("paid", "out_of_stock"), (order_id, status)
            assert body["status"] == status
            assert books["cancellations"][order_id] == 0
        assert books["notifications"][order_id] == [NOTIFICATION_OF[status]], order_id
    paid = [order_id for order_id, status in final.items() if status == "paid"]
    assert set(paid) == books["charged"]
    assert all(books["reservations"][order_id] == {"reserved"} for order_id in paid)
    assert await stock_of(system.pool, sku) == 100 - len(paid)
    # It was a race: orders were cancelled after their stock was reserved, and others were paid
    # first.
    cancelled = [order_id for order_id, status in final.items() if status == "cancelled"]
    released = [order_id for order_id in cancelled if order_id in books["reservations"]]
    print(
        f"\n150 cancels: {len(cancelled)} cancelled ({len(released)} after their reservation), "
        f"{len(paid)} paid first, {Counter(final.values())['out_of_stock']} out of stock first"
    )
    assert paid
    assert released


@pytest.fixture
async def inventory_stopped(system: System) -> AsyncIterator[None]:
    assert await system.processes["inventory"].stop() == 0
    try:
        yield
    finally:
        if system.processes["inventory"].process.poll() is not None:  # type: ignore[union-attr]
            system.processes["inventory"] = await start_service("inventory", system.environ)


async def test_an_order_placed_event_that_arrives_after_the_cancel_reserves_nothing(
    system: System, new_product: NewProduct, inventory_stopped: None
) -> None:
    sku = await new_product(stock=10)
    orders = [await system.place_order([(sku, 2)]) for _ in range(5)]
    for order in orders:
        assert (await cancel(system, order["id"]))[0] == 200

    system.processes["inventory"] = await start_service("inventory", system.environ)
    order_ids = [UUID(order["id"]) for order in orders]
    final = await wait_until_books_close(system, order_ids)

    async def inventory_saw_every_order_placed() -> bool:
        seen = await system.pool.fetchval(
            """
            SELECT count(*) FROM processed_events AS p
            JOIN event_outbox AS e ON e.event_id = p.event_id
            WHERE p.service = 'inventory' AND e.order_id = ANY($1::uuid[])
              AND e.event_type = 'OrderPlaced'
            """,
            order_ids,
        )
        return bool(seen == len(order_ids))

    await wait_until(inventory_saw_every_order_placed, what="inventory to handle each OrderPlaced")
    books = await books_of(system, order_ids)
    assert set(final.values()) == {"cancelled"}
    assert books["reservations"] == {}
    assert await stock_of(system.pool, sku) == 10
    assert all(books["notifications"][order_id] == ["order_cancelled"] for order_id in order_ids)
    assert "is already cancelled; nothing to reserve" in system.processes["inventory"].log()


@pytest.fixture
async def payment_stopped_and_orders_expiring(system: System) -> AsyncIterator[None]:
    """Payment down, and a publisher that cancels orders not final 2 s after they were placed."""
    assert await system.processes["payment"].stop() == 0
    await system.replace("publisher", ORDER_TIMEOUT="2")
    try:
        yield
    finally:
        try:
            if system.processes["payment"].process.poll() is not None:  # type: ignore[union-attr]
                system.processes["payment"] = await start_service("payment", system.environ)
        finally:
            await system.replace("publisher")


async def test_orders_that_time_out_while_payment_is_down_end_cancelled_and_are_never_charged(
    system: System, new_product: NewProduct, payment_stopped_and_orders_expiring: None
) -> None:
    sku = await new_product(stock=30)
    orders = [await system.place_order([(sku, 3)]) for _ in range(10)]
    order_ids = [UUID(order["id"]) for order in orders]

    final = await wait_until_books_close(system, order_ids)
    books = await books_of(system, order_ids)
    assert set(final.values()) == {"cancelled"}
    # Each had been reserved (payment was the step that did not come), and gave its stock back.
    assert all(books["reservations"][order_id] == {"released"} for order_id in order_ids)
    assert await stock_of(system.pool, sku) == 30
    assert all(books["notifications"][order_id] == ["order_cancelled"] for order_id in order_ids)
    reasons = await system.pool.fetch(
        "SELECT payload->>'reason' AS reason FROM event_outbox "
        "WHERE order_id = ANY($1::uuid[]) AND event_type = 'OrderCancelled'",
        order_ids,
    )
    assert [r["reason"] for r in reasons] == ["timed_out"] * 10
    assert "cancelled: not final 2s after it was placed" in system.processes["publisher"].log()

    # Payment comes back to ten charges waiting in its queue, and makes none of them.
    system.processes["payment"] = await start_service("payment", system.environ)

    async def payment_handled_each_reservation() -> bool:
        seen = await system.pool.fetchval(
            """
            SELECT count(*) FROM processed_events AS p
            JOIN event_outbox AS e ON e.event_id = p.event_id
            WHERE p.service = 'payment' AND e.order_id = ANY($1::uuid[])
            """,
            order_ids,
        )
        return bool(seen == len(order_ids))

    await wait_until(payment_handled_each_reservation, what="payment to take its queue")
    assert (await books_of(system, order_ids))["charged"] == set()
    rows = await system.pool.fetch(
        "SELECT status FROM orders WHERE id = ANY($1::uuid[])", order_ids
    )
    assert {r["status"] for r in rows} == {"cancelled"}
