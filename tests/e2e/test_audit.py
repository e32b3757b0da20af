"""The reconciliation audit (`acme-orders audit`) against the books of a real run: orders paid,
payment_failed, out_of_stock and cancelled (while pending and while reserved) by the five real
processes. Clean books are found clean, stock an operator adds is known to it, and each
corruption of the books made by hand is named, by kind and id.

The run has a database and vhost of its own (not the session's system): the audit checks
everything in them, and other tests leave their own marks on a shared one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import aio_pika
import asyncpg
import httpx
import pytest

from acme_orders.core.topology import INVENTORY_ORDER_PLACED, PAYMENT_INVENTORY_RESERVED, QUEUES
from acme_orders.ops.audit import Report, audit
from acme_orders.services import SERVICES
from tests.support.audit import assert_audit_clean, audit_now
from tests.support.environment import TestEnvironment, create_environment, drop_environment
from tests.support.processes import ServiceProcess, acme_orders, free_port, stop_all
from tests.support.products import add_product, stock_of
from tests.support.system import System, start_service, wait_ready
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


@dataclass
class Books:
    """The run, and the orders it left, by what happened to them."""

    system: System
    plenty: str
    scarce: str
    paid: list[str]
    paid_alone: str  # paid, the only order of its product
    alone_sku: str
    payment_failed: str
    out_of_stock: str
    cancelled_reserved: str
    cancelled_pending: str

    @property
    def env(self) -> TestEnvironment:
        return self.system.env


async def status_of(system: System, order_id: str) -> str:
    order: dict[str, Any] = (await system.client.get(f"/orders/{order_id}")).json()
    return str(order["status"])


async def place_and_finish(system: System, items: list[tuple[str, int]]) -> dict[str, Any]:
    order = await system.place_order(items)
    return await system.wait_for_final_status(order["id"])


async def cancel_while_stopped(system: System, stopped: str, wait_for: str, sku: str) -> str:
    """An order cancelled while `stopped` is down, so that it is still `wait_for` then; the
    service is started again afterwards and handles what it missed."""
    await system.processes[stopped].stop()
    try:
        order = await system.place_order([(sku, 1)])

        async def reached() -> bool:
            return await status_of(system, order["id"]) == wait_for

        await wait_until(reached, what=f"order {order['id']} {wait_for}")
        response = await system.client.post(f"/orders/{order['id']}/cancel")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"
    finally:
        system.processes[stopped] = await start_service(
            stopped, system.environ, f"audit-{stopped}-again"
        )
    return str(order["id"])


@pytest.fixture(scope="module")
async def books() -> AsyncIterator[Books]:
    env = await create_environment(QUEUES)
    port = free_port()
    environ = env.environ(API_PORT=str(port), PAYMENT_SUCCESS_RATE="1.0")
    pool = await asyncpg.create_pool(env.database_url, min_size=1, max_size=4)
    assert pool is not None
    processes = {
        name: ServiceProcess.service(name, environ, f"audit-{name}").start() for name in SERVICES
    }
    try:
        for process in processes.values():
            await wait_ready(process)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            system = System(env, environ, client, pool, processes)
            plenty = await add_product(pool, stock=50)
            scarce = await add_product(pool, stock=1)
            alone = await add_product(pool, stock=5)

            paid = [(await place_and_finish(system, [(plenty, 2)]))["id"] for _ in range(3)]
            paid_alone = (await place_and_finish(system, [(alone, 2)]))["id"]
            out_of_stock = (await place_and_finish(system, [(scarce, 2), (plenty, 1)]))["id"]
            await system.replace("payment", PAYMENT_SUCCESS_RATE="0")
            try:
                payment_failed = (await place_and_finish(system, [(plenty, 3)]))["id"]
            finally:
                await system.replace("payment", PAYMENT_SUCCESS_RATE="1.0")
            cancelled_reserved = await cancel_while_stopped(system, "payment", "reserved", plenty)
            cancelled_pending = await cancel_while_stopped(system, "inventory", "pending", plenty)

            statuses = [
                await status_of(system, order_id)
                for order_id in (*paid, paid_alone, payment_failed, out_of_stock)
            ]
            assert statuses == [*["paid"] * 4, "payment_failed", "out_of_stock"]
            yield Books(
                system,
                plenty,
                scarce,
                paid,
                paid_alone,
                alone,
                payment_failed,
                out_of_stock,
                cancelled_reserved,
                cancelled_pending,
            )
    finally:
        try:
            await stop_all(list(processes.values()))
        finally:
            await pool.close()
            await drop_environment(env.name)


async def cli_audit(books: Books, *args: str) -> tuple[int, dict[str, Any]]:
    result = await acme_orders(books.env.environ(), "audit", "--json", "--grace", "0", *args)
    assert result.returncode in (0, 1), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, report


async def test_a_clean_run_is_found_clean_and_stock_added_is_known(books: Books) -> None:
    pool, settings = books.system.pool, books.env.settings()

    report = await assert_audit_clean(pool, settings)

    assert report.checked.final_orders == 8
    assert report.checked.products == 3 + 10  # the test's own and the catalogue
    assert report.checked.events > 0
    code, as_json = await cli_audit(books)
    assert code == 0
    assert as_json["clean"] is True
    assert as_json["findings"] == []

    before = await stock_of(pool, books.plenty)
    added = await acme_orders(books.env.environ(), "stock", "add", books.plenty, "5")
    assert added.returncode == 0, added.stderr
    assert await stock_of(pool, books.plenty) == before + 5
    code, as_json = await cli_audit(books)
    assert code == 0, as_json["findings"]

    # What retention and privacy take away is no fault: the first order's events and their
    # processed_events, aged past both retentions and purged; every customer forgotten.
    await pool.execute(
        """
        WITH aged AS (
            UPDATE event_outbox SET published_at = published_at - interval '40 days'
            WHERE order_id = $1
            RETURNING event_id
        )
        UPDATE processed_events SET processed_at = processed_at - interval '40 days'
        WHERE event_id IN (SELECT event_id FROM aged)
        """,
        UUID(books.paid[0]),
    )
    purged = await acme_orders(books.env.environ(), "outbox", "purge")
    assert purged.returncode == 0, purged.stderr
    assert "deleted 3 SENT outbox rows (older than 7d), 3 processed_events" in purged.stdout
    forgotten = await acme_orders(books.env.environ(), "forget", "C100")
    assert forgotten.returncode == 0, forgotten.stderr
    code, as_json = await cli_audit(books)
    assert code == 0, as_json["findings"]

    # Within the grace, orders and events are left for a later audit: in flight, not faults.
    recent = await audit(pool, settings, grace=timedelta(hours=1))
    assert recent.clean
    assert recent.checked.final_orders == 0
    assert recent.checked.events == 0


def findings_by_kind(report: Report) -> dict[str, set[str]]:
    """Each kind found, with the ids (orders, SKUs, events, queues) of its items."""
    return {
        finding.kind: {
            value
            for item in finding.items
            for name, value in item.as_dict().items()
            if name != "detail"
        }
        for finding in report.findings
    }


async def test_each_corruption_of_the_books_is_named(books: Books) -> None:
    pool, settings = books.system.pool, books.env.settings()
    first, second, third = (UUID(order_id) for order_id in books.paid)
    await assert_audit_clean(pool, settings)

    # A stock row changed by hand.
    await pool.execute("UPDATE products SET stock_qty = stock_qty + 7 WHERE sku = $1", books.scarce)
    # A notification deleted.
    await pool.execute("DELETE FROM notifications WHERE order_id = $1", first)
    # A notification of the wrong kind.
    await pool.execute(
        "UPDATE notifications SET kind = 'payment_failed' WHERE order_id = $1", second
    )
    # A processed_events row removed: notification never handled third's PaymentCompleted.
    completed = await pool.fetchval(
        "SELECT event_id FROM event_outbox WHERE order_id = $1 AND event_type = 'PaymentCompleted'",
        third,
    )
    await pool.execute(
        "DELETE FROM processed_events WHERE service = 'notification' AND event_id = $1", completed
    )
    # A reservation of a paid order marked released (its product's stock now looks short).
    await pool.execute(
        "UPDATE stock_reservations SET status = 'released' WHERE order_id = $1",
        UUID(books.paid_alone),
    )
    # Stock of a failed payment held again.
    await pool.execute(
        "UPDATE stock_reservations SET status = 'reserved' WHERE order_id = $1",
        UUID(books.payment_failed),
    )
    # A message parked in a dead-letter queue.
    connection = await aio_pika.connect(books.env.rabbitmq_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}", message_id="parked-by-the-test"),
            routing_key=PAYMENT_INVENTORY_RESERVED.dead_letter_queue,
        )
    # An order that waits: inventory is down.
    await books.system.processes["inventory"].stop()
    try:
        stuck = (await books.system.place_order([(books.plenty, 1)]))["id"]

        async def published() -> bool:
            status = await pool.fetchval(
                "SELECT status FROM event_outbox WHERE order_id = $1", UUID(stuck)
            )
            return bool(status == "SENT")

        await wait_until(published, what="the stuck order's OrderPlaced published")

        report = await audit_now(pool, settings)
        code, as_json = await cli_audit(books, "--stuck-after", "0")
    finally:
        books.system.processes["inventory"] = await start_service(
            "inventory", books.system.environ, "audit-inventory-last"
        )

    found = findings_by_kind(report)
    placed = str(
        await pool.fetchval("SELECT event_id FROM event_outbox WHERE order_id = $1", UUID(stuck))
    )
    assert found == {
        # scarce changed by hand; alone_sku and plenty hold less and more than their stock says.
        "stock_mismatch": {books.scarce, books.alone_sku, books.plenty},
        "notification_missing": {str(first)},
        "notification_wrong_kind": {str(second)},
        "event_unhandled": {
            str(third),
            str(completed),
            "notification",
            "notification.order.outcome",
            # With no grace, the stuck order's OrderPlaced too.
            stuck,
            placed,
            "inventory",
            INVENTORY_ORDER_PLACED.name,
        },
        "reservation_released": {books.paid_alone},
        "reservation_held": {books.payment_failed},
        "dead_letters": {PAYMENT_INVENTORY_RESERVED.dead_letter_queue},
        "order_waiting": {stuck, placed, "inventory", INVENTORY_ORDER_PLACED.name},
    }
    waiting = next(f for f in report.findings if f.kind == "order_waiting")
    assert "not handled by inventory (inventory.order.placed)" in (waiting.items[0].detail or "")
    stock = next(f for f in report.findings if f.kind == "stock_mismatch")
    assert str({item.sku: item.detail for item in stock.items}[books.scarce]).startswith(
        "stock 8, expected 1"
    )

    # The CLI says the same, machine-readable, and exits 1.
    assert code == 1
    assert {finding["kind"] for finding in as_json["findings"]} == set(found)
    unhandled = next(f for f in as_json["findings"] if f["kind"] == "event_unhandled")
    assert unhandled["count"] == 2
    items = unhandled["items"]
    assert {(item["event_id"], item["order_id"], item["service"]) for item in items} == {
        (str(completed), str(third), "notification"),
        (placed, stuck, "inventory"),
    }
    # The dead letter is still where it was.
    assert (
        "parked-by-the-test"
        in (
            await acme_orders(books.env.environ(), "dlq", "list", PAYMENT_INVENTORY_RESERVED.name)
        ).stdout
    )


async def test_unreachable_servers_have_exit_codes_of_their_own(books: Books) -> None:
    no_database = await acme_orders(
        books.env.environ(DATABASE_URL="postgresql://nobody@127.0.0.1:1/none"), "audit"
    )
    assert no_database.returncode == 3
    assert no_database.stderr.startswith("acme-orders audit: PostgreSQL: ")
    no_broker = await acme_orders(
        books.env.environ(RABBITMQ_URL="amqp://guest:guest@127.0.0.1:1/"), "audit"
    )
    assert no_broker.returncode == 4
    assert no_broker.stderr.startswith("acme-orders audit: RabbitMQ: ")
