"""An order's whole journey through the real processes, observed over HTTP and in the tables."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections import Counter
from pathlib import Path
from uuid import UUID

import aio_pika
import asyncpg
import httpx
import pytest

from acme_orders.core.events import EXCHANGE
from tests.support.api import one_line_order
from tests.support.environment import TestEnvironment
from tests.support.processes import ServiceProcess, free_port, stop_all
from tests.support.products import NewProduct, add_product, stock_of
from tests.support.system import System, wait_for_api, wait_ready
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def new_product(system: System) -> NewProduct:
    return functools.partial(add_product, system.pool)


async def outbox_of(system: System, order_id: str) -> list[tuple[str, str]]:
    rows = await system.pool.fetch(
        "SELECT event_type, status FROM event_outbox WHERE order_id = $1 ORDER BY id",
        UUID(order_id),
    )
    return [(r["event_type"], r["status"]) for r in rows]


async def notifications_of(system: System, order_id: str) -> list[str]:
    rows = await system.pool.fetch(
        "SELECT kind FROM notifications WHERE order_id = $1", UUID(order_id)
    )
    return [r["kind"] for r in rows]


async def test_happy_path_order_is_paid_and_stock_goes_down(
    system: System, new_product: NewProduct
) -> None:
    sku = await new_product(stock=10)

    order = await system.place_order([(sku, 2)], email="c100@example.com")
    final = await system.wait_for_final_status(order["id"])
    await system.wait_until_settled(order["id"])

    assert final["status"] == "paid"
    assert await stock_of(system.pool, sku) == 8
    assert await outbox_of(system, order["id"]) == [
        ("OrderPlaced", "SENT"),
        ("InventoryReserved", "SENT"),
        ("PaymentCompleted", "SENT"),
    ]
    assert await notifications_of(system, order["id"]) == ["order_paid"]
    logs = system.logs()
    assert f"RESERVED order {order['id']}" in logs
    assert f"COMPLETED payment of 20.00 for order {order['id']}" in logs
    assert f"Order Paid: e-mail sent to c1***@e***.com for order {order['id']}" in logs
    assert "c100@example.com" not in logs


async def test_out_of_stock_order_leaves_stock_untouched(
    system: System, new_product: NewProduct
) -> None:
    sku = await new_product(stock=3)

    order = await system.place_order([(sku, 999)], customer="C200", email="c200@example.com")
    final = await system.wait_for_final_status(order["id"])
    await system.wait_until_settled(order["id"])

    assert final["status"] == "out_of_stock"
    assert await stock_of(system.pool, sku) == 3
    assert await notifications_of(system, order["id"]) == ["out_of_stock"]
    logs = system.logs()
    assert f"OUT_OF_STOCK order {order['id']}: {sku} wants 999, has 3" in logs
    assert f"Out of Stock: e-mail sent to c2***@e***.com for order {order['id']}" in logs


async def test_multi_line_order_with_one_short_line_reserves_nothing(
    system: System, new_product: NewProduct
) -> None:
    plenty = await new_product(stock=10)
    scarce = await new_product(stock=1)

    order = await system.place_order([(plenty, 2), (scarce, 3)])
    final = await system.wait_for_final_status(order["id"])

    assert final["status"] == "out_of_stock"
    assert await stock_of(system.pool, plenty) == 10
    assert await stock_of(system.pool, scarce) == 1
    reservations = await system.pool.fetchval(
        "SELECT count(*) FROM stock_reservations WHERE order_id = $1", UUID(order["id"])
    )
    assert reservations == 0


async def test_failed_payment_gives_the_stock_back(system: System, new_product: NewProduct) -> None:
    sku = await new_product(stock=10)
    other = await new_product(stock=4)
    await system.replace("payment", PAYMENT_SUCCESS_RATE="0")
    try:
        order = await system.place_order([(sku, 3), (other, 4)])
        final = await system.wait_for_final_status(order["id"])
        await system.wait_until_settled(order["id"])

        async def released() -> bool:
            return ("InventoryReleased", "SENT") in await outbox_of(system, order["id"])

        await wait_until(released, what="the stock released")
    finally:
        await system.replace("payment", PAYMENT_SUCCESS_RATE="1.0")

    assert final["status"] == "payment_failed"
    assert await stock_of(system.pool, sku) == 10
    assert await stock_of(system.pool, other) == 4
    assert await notifications_of(system, order["id"]) == ["payment_failed"]
    logs = system.logs()
    assert f"FAILED payment of 70.00 for order {order['id']}" in logs
    assert f"RELEASED order {order['id']}" in logs


async def test_concurrent_orders_never_oversell(system: System, new_product: NewProduct) -> None:
    sku = await new_product(stock=20)

    orders = await asyncio.gather(*(system.place_order([(sku, 1)]) for _ in range(35)))
    finals = await asyncio.gather(*(system.wait_for_final_status(o["id"]) for o in orders))

    assert Counter(f["status"] for f in finals) == {"paid": 20, "out_of_stock": 15}
    assert await stock_of(system.pool, sku) == 0


async def test_two_publishers_drain_one_outbox_without_duplicates(
    fresh_env: TestEnvironment,
) -> None:
    key = "test.drain"
    conn = await asyncpg.connect(fresh_env.database_url)
    connection = await aio_pika.connect(fresh_env.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(key, durable=True)
        await queue.bind(EXCHANGE, key)
        await conn.execute(
            """
            INSERT INTO event_outbox (event_id, event_type, routing_key, payload)
            SELECT gen_random_uuid(), 'TestHappened', $1, jsonb_build_object('n', n)
            FROM generate_series(1, 3000) AS n
            """,
            key,
        )
        environ = fresh_env.environ(OUTBOX_BATCH_SIZE="100")
        publishers = [
            ServiceProcess.service("publisher", environ, f"publisher-{n}").start() for n in (1, 2)
        ]

        async def drained() -> bool:
            unsent = await conn.fetchval("SELECT count(*) FROM event_outbox WHERE status = 'NEW'")
            return bool(unsent == 0)

        try:
            await asyncio.gather(*(wait_ready(p) for p in publishers))
            await wait_until(drained, deadline=60, what="the outbox drained")
        finally:
            try:
                await stop_all(publishers)
            finally:
                await conn.close()

        # Every row was confirmed before it was marked SENT, so all of them are in the queue.
        queue = await channel.declare_queue(key, durable=True)
        message_ids = set()
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            message_ids.add(message.message_id)

    assert queue.declaration_result.message_count == 3000
    assert len(message_ids) == 3000
    for publisher in publishers:
        assert "relayed" in publisher.log(), "each publisher should have taken a share"


async def test_run_all_starts_the_system_and_stops_it_cleanly(fresh_env: TestEnvironment) -> None:
    port = free_port()
    # The console script pip installed beside this interpreter.
    command = Path(sys.executable).parent / "acme-orders"
    assert command.exists(), "acme-orders is installed with the package"
    process = ServiceProcess(
        [str(command), "run", "all"], fresh_env.environ(API_PORT=str(port)), "run-all"
    ).start()
    try:
        await wait_for_api(f"http://127.0.0.1:{port}", process)
        for queue in ("inventory.order.placed", "payment.inventory.reserved", "notification."):
            await process.wait_for_log(f"ready: consuming {queue}")
        await process.wait_for_log("ready: relaying the outbox")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.post(
                "/orders",
                json=one_line_order(),
            )
            order_id = response.json()["id"]

            async def paid() -> bool:
                return bool((await client.get(f"/orders/{order_id}")).json()["status"] == "paid")

            await wait_until(paid, what="the order paid")
    finally:
        exit_code = await process.stop(within=30)

    assert exit_code == 0
    log = process.log()
    assert "all services stopped" in log
    for service in ("publisher", "inventory", "payment", "notification"):
        assert f"INFO    {service:<12} acme_orders.core.runtime: stopped" in log
