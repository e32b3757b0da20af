"""Nothing lost, nothing done twice: orders under load while processes die and servers vanish.

Each test runs its own deployment (two publishers, two of each consumer, one API, their broker
and database connections through proxies the test can cut), places a few hundred orders with
Idempotency-Keys while it injects one fault, then checks every order against the invariants:

- every accepted order, and no other, is in the database, and reaches a final status;
- each product's stock is its starting stock minus what the paid orders hold;
- stock reserved for an order whose payment failed is given back;
- every order has exactly one notification, of the kind its status calls for;
- each consumer handled each of its events once, and no message was dead-lettered.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from uuid import uuid4

import aio_pika
import asyncpg
import httpx
import pytest

from acme_orders.cli import CONSUMER_QUEUES
from tests.conftest import add_product
from tests.e2e.conftest import wait_ready
from tests.environment import TestEnvironment, create_environment, drop_environment
from tests.faults import TcpProxy
from tests.processes import ServiceProcess, free_port, stop_all
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

ORDERS = 300
RATE = 100  # orders offered per second
OUTAGE_SECONDS = 3.0
INSTANCES = {"publisher": 2, "inventory": 2, "payment": 2, "notification": 2}
KIND_FOR_STATUS = {
    "paid": "order_paid",
    "payment_failed": "payment_failed",
    "out_of_stock": "out_of_stock",
}


@dataclass
class Deployment:
    env: TestEnvironment
    environ: dict[str, str]
    database: TcpProxy
    broker: TcpProxy
    pool: asyncpg.Pool
    client: httpx.AsyncClient
    processes: dict[str, list[ServiceProcess]] = field(default_factory=dict)

    async def start(self, service: str) -> None:
        self.processes[service] = [
            ServiceProcess.service(service, self.environ, f"{service}-{n}").start()
            for n in range(INSTANCES.get(service, 1))
        ]
        await asyncio.gather(*(wait_ready(p) for p in self.processes[service]))

    async def kill_and_restart(self, service: str) -> None:
        for process in self.processes[service]:
            process.kill()
        await self.start(service)


@pytest.fixture
async def deployment() -> AsyncIterator[Deployment]:
    env = await create_environment(CONSUMER_QUEUES)
    database = await TcpProxy("127.0.0.1", 5432).start()
    broker = await TcpProxy("127.0.0.1", 5672).start()
    port = free_port()
    environ = env.environ(
        DATABASE_URL=env.database_url.replace(":5432/", f":{database.port}/"),
        RABBITMQ_URL=env.rabbitmq_url.replace(":5672/", f":{broker.port}/"),
        API_PORT=str(port),
        PAYMENT_SUCCESS_RATE="0.7",
        OUTBOX_BATCH_SIZE="50",
    )
    pool = await asyncpg.create_pool(env.database_url, min_size=1, max_size=4)
    assert pool is not None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        deployed = Deployment(env, environ, database, broker, pool, client)
        try:
            for service in ("api", *INSTANCES):
                await deployed.start(service)
            yield deployed
        finally:
            try:
                await stop_all([p for group in deployed.processes.values() for p in group])
            finally:
                await pool.close()
                await database.stop()
                await broker.stop()
                await drop_environment(env.name)


@dataclass
class Load:
    """Orders offered at a steady rate, each retried with its Idempotency-Key until accepted."""

    client: httpx.AsyncClient
    skus: list[str]
    accepted: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> order id
    rejected: list[str] = field(default_factory=list)
    unavailable: int = 0  # answers 503
    unreachable: int = 0  # no answer at all

    async def run(self, orders: int, rate: float) -> None:
        shape = random.Random(7)
        tasks = []
        for _ in range(orders):
            lines = shape.sample(self.skus, shape.randint(1, 3))
            body = {
                "customer_id": f"C{shape.randint(1, 50)}",
                "email": "load@example.com",
                "items": [{"sku": sku, "qty": shape.randint(1, 2)} for sku in lines],
            }
            tasks.append(asyncio.create_task(self.place(str(uuid4()), body)))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)

    async def place(self, key: str, body: Mapping[str, object]) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 60
        while loop.time() < give_up:
            try:
                response = await self.client.post(
                    "/orders", json=body, headers={"Idempotency-Key": key}
                )
            except httpx.TransportError:
                self.unreachable += 1  # the API is down or restarting: again, with the same key
            else:
                if response.status_code == 201:
                    self.accepted[key] = response.json()["id"]
                    return
                if response.status_code != 503:
                    self.rejected.append(f"{response.status_code} {response.text}")
                    return
                self.unavailable += 1
            await asyncio.sleep(0.1)
        self.rejected.append(f"not accepted within 60s: {body}")


Fault = Callable[[Deployment, Load], Awaitable[None]]


def kill(service: str) -> Fault:
    async def inject(deployed: Deployment, load: Load) -> None:
        await deployed.kill_and_restart(service)
        if service == "api":
            assert load.unreachable > 0, "clients saw the API go away, and retried"

    return inject


async def cut_broker(deployed: Deployment, load: Load) -> None:
    await deployed.broker.cut()
    before = len(load.accepted)
    await asyncio.sleep(OUTAGE_SECONDS)  # the length of the outage, not a wait for a result
    accepted_while_away = len(load.accepted) - before
    await deployed.broker.restore()
    assert accepted_while_away > 0, "the API accepts orders while RabbitMQ is away"


async def cut_database(deployed: Deployment, load: Load) -> None:
    await deployed.database.cut()
    await asyncio.sleep(OUTAGE_SECONDS)
    await deployed.database.restore()
    assert load.unavailable > 0, "the API answered 503 while the database was away"


FAULTS: dict[str, Fault] = {
    "kill api": kill("api"),
    "kill publishers": kill("publisher"),
    "kill inventory": kill("inventory"),
    "kill payment": kill("payment"),
    "kill notification": kill("notification"),
    "broker connections cut": cut_broker,
    "database connections cut": cut_database,
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
async def test_every_order_survives_the_fault_exactly_once(
    deployment: Deployment, fault: Fault
) -> None:
    start_stock = {await add_product(deployment.pool, stock=60): 60 for _ in range(6)}
    load = Load(deployment.client, list(start_stock))

    async def inject_at_a_third() -> None:
        await wait_until(
            lambda: _now(len(load.accepted) >= ORDERS // 3), deadline=60, what="a third placed"
        )
        await fault(deployment, load)

    await asyncio.gather(load.run(ORDERS, RATE), inject_at_a_third())

    assert load.rejected == []
    await assert_pipeline_consistent(deployment, set(load.accepted.values()), start_stock)


async def assert_pipeline_consistent(
    deployed: Deployment, accepted: set[str], start_stock: dict[str, int]
) -> None:
    pool = deployed.pool

    async def all_final() -> bool:
        waiting = await pool.fetchval(
            "SELECT count(*) FROM orders WHERE status IN ('pending', 'reserved')"
        )
        return bool(waiting == 0)

    await wait_until(all_final, deadline=90, what="every order to reach a final status")

    async def settled() -> bool:
        row = await pool.fetchrow(
            """
            SELECT
              (SELECT count(*) FROM orders) = (SELECT count(DISTINCT order_id) FROM notifications)
                AS all_notified,
              NOT EXISTS (
                SELECT 1 FROM stock_reservations r JOIN orders o ON o.id = r.order_id
                WHERE r.status = 'reserved' AND o.status <> 'paid') AS all_released,
              NOT EXISTS (SELECT 1 FROM event_outbox WHERE status = 'NEW') AS all_sent
            """
        )
        return bool(row and row["all_notified"] and row["all_released"] and row["all_sent"])

    await wait_until(settled, deadline=60, what="notifications, releases and the outbox")

    orders = {str(r["id"]): r["status"] for r in await pool.fetch("SELECT id, status FROM orders")}
    assert set(orders) == accepted, "exactly the accepted orders, none twice, none lost"

    paid_qty = {
        r["sku"]: r["qty"]
        for r in await pool.fetch(
            """
            SELECT i.sku, sum(i.qty) AS qty FROM order_items i JOIN orders o ON o.id = i.order_id
            WHERE o.status = 'paid' GROUP BY i.sku
            """
        )
    }
    stock = {
        r["sku"]: r["stock_qty"]
        for r in await pool.fetch(
            "SELECT sku, stock_qty FROM products WHERE sku = ANY($1::text[])", list(start_stock)
        )
    }
    assert stock == {sku: start - paid_qty.get(sku, 0) for sku, start in start_stock.items()}

    notifications = await pool.fetch(
        "SELECT order_id, kind, count(*) OVER (PARTITION BY order_id) AS n FROM notifications"
    )
    assert all(r["n"] == 1 for r in notifications), "one notification per order"
    assert {str(r["order_id"]): r["kind"] for r in notifications} == {
        order_id: KIND_FOR_STATUS[status] for order_id, status in orders.items()
    }

    handled = {
        (r["service"], r["event_type"]): r["n"]
        for r in await pool.fetch(
            """
            SELECT p.service, e.event_type, count(*) AS n
            FROM processed_events p JOIN event_outbox e ON e.event_id = p.event_id
            GROUP BY p.service, e.event_type
            """
        )
    }
    statuses = list(orders.values())
    charged = statuses.count("paid") + statuses.count("payment_failed")
    expected = {
        ("inventory", "OrderPlaced"): len(orders),
        ("payment", "InventoryReserved"): charged,
        ("inventory", "PaymentFailed"): statuses.count("payment_failed"),
        ("notification", "PaymentCompleted"): statuses.count("paid"),
        ("notification", "PaymentFailed"): statuses.count("payment_failed"),
        ("notification", "OrderOutOfStock"): statuses.count("out_of_stock"),
    }
    assert handled == {key: n for key, n in expected.items() if n}

    connection = await aio_pika.connect(deployed.env.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        for spec in CONSUMER_QUEUES:
            dlq = await channel.declare_queue(spec.dead_letter_queue, passive=True)
            assert dlq.declaration_result.message_count == 0, f"{spec.dead_letter_queue} not empty"


async def _now(value: bool) -> bool:
    return value
