"""The database refusing work, for real, for longer than a message's deliveries would last.

Each test runs the five services against its own database, connected as a role of its own that is
no superuser (tests/support/database_roles.py), places orders, and then makes PostgreSQL refuse
that role: its CONNECTION LIMIT exhausted (53300 at connect), its backends terminated over and
over (57P01, class 08), or the database made read-only (25006 on every write). The fault lasts
FAULT_SECONDS, longer than DELIVERY_LIMIT requeues would take, while events wait for the
consumers and clients go on placing orders; the API must answer those 503 with Retry-After, never
500. Once the fault is lifted every accepted order ends final, exactly once, and no dead-letter
queue holds anything (tests/support/load.py::assert_pipeline_consistent).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import pytest

from acme_orders.core.consumer import RETRY_PAUSE_MAX
from acme_orders.core.messaging import DELIVERY_LIMIT, connect_once, declare_exchange
from acme_orders.core.settings import Settings
from acme_orders.core.topology import QUEUES
from acme_orders.order_api import store
from acme_orders.order_api.schemas import PlaceOrder
from acme_orders.publisher.relay import relay_outbox_batch
from tests.support.audit import assert_audit_clean
from tests.support.database_roles import (
    AppRole,
    create_app_role,
    database_url_as,
    drop_app_role,
    sweep_abandoned_roles,
)
from tests.support.environment import (
    ADMIN_DATABASE_URL,
    TestEnvironment,
    create_environment,
    drop_environment,
    sweep_abandoned_environments,
)
from tests.support.load import assert_pipeline_consistent
from tests.support.processes import ServiceProcess, free_port, stop_all
from tests.support.products import add_product
from tests.support.system import wait_ready
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

# Longer than a message requeued on every failure would take to reach DELIVERY_LIMIT (its
# requeues are at most RETRY_PAUSE_MAX apart): a consumer that spent a delivery per attempt would
# have dead-lettered the orders by the end.
FAULT_SECONDS = DELIVERY_LIMIT * RETRY_PAUSE_MAX + 2.0
SERVICES = ("api", "publisher", "inventory", "payment", "notification")
ORDERS_BEFORE = 20
# Orders that reach the consumers while the database refuses them: the test stores them as the
# API would and relays them as the publisher would, with a connection of its own that the fault
# spares (a superuser's, read-write), so that they are surely waiting when the fault bites.
ORDERS_DURING = 20
CLIENT_RATE = 5.0  # orders a second clients offer the API during the fault
# The routes that read the database, each of which must answer 503 while it refuses connections.
READ_ROUTES = ("/orders/{id}", "/orders/{id}/events", "/orders", "/products")


@dataclass
class Clients:
    """Clients placing orders with an Idempotency-Key, as a well-behaved client does: on a 503
    they wait Retry-After seconds and send the same request again, until it is accepted. Any
    other answer, or a 503 without Retry-After, is a refusal the test fails on."""

    client: httpx.AsyncClient
    skus: list[str]
    accepted: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> order id
    refusals: list[str] = field(default_factory=list)
    unavailable: int = 0
    shape: random.Random = field(default_factory=lambda: random.Random(14))

    def body(self) -> dict[str, Any]:
        lines = self.shape.sample(self.skus, self.shape.randint(1, 3))
        return {
            "customer_id": f"C{self.shape.randint(1, 50)}",
            "email": "faults@example.com",
            "items": [{"sku": sku, "qty": self.shape.randint(1, 2)} for sku in lines],
        }

    async def place(self) -> None:
        key, body = str(uuid4()), self.body()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 60
        while loop.time() < give_up:
            response = await self.client.post(
                "/orders", json=body, headers={"Idempotency-Key": key}
            )
            if response.status_code == 201:
                self.accepted[key] = response.json()["id"]
                return
            retry_after = response.headers.get("Retry-After")
            if response.status_code != 503 or retry_after is None:
                self.refusals.append(f"POST /orders: {response.status_code} {response.text}")
                return
            self.unavailable += 1
            # What the API asked for: a client's pause, not a wait for a result.
            await asyncio.sleep(float(retry_after))
        self.refusals.append(f"not accepted within 60s: {body}")

    async def place_at(self, rate: float, seconds: float) -> list[asyncio.Task[None]]:
        """Start placing `rate` orders a second for `seconds`; the tasks, which end once each
        order is accepted or refused."""
        tasks = []
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while loop.time() < until:
            tasks.append(asyncio.create_task(self.place()))
            await asyncio.sleep(1 / rate)
        return tasks


@dataclass
class Deployment:
    env: TestEnvironment
    role: str
    # The superuser's, on the test's database: what the fault spares. Read-write whatever the
    # database's default, for the orders the test stores itself.
    pool: asyncpg.Pool
    # The superuser's, on the server's maintenance database: to inflict the faults.
    admin: asyncpg.Connection
    client: httpx.AsyncClient
    processes: dict[str, ServiceProcess]

    async def terminate_backends(self, started_before: datetime | None = None) -> int:
        """Terminate the role's backends (those that started before `started_before`, if
        given); how many there were."""
        terminated: int = await self.admin.fetchval(
            """
            SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
            WHERE usename = $1 AND ($2::timestamptz IS NULL OR backend_start < $2::timestamptz)
            """,
            self.role,
            started_before,
        )
        return terminated

    async def wait_until_no_backend(self, started_before: datetime | None = None) -> None:
        async def none_left() -> bool:
            return await self.terminate_backends(started_before) == 0

        await wait_until(none_left, deadline=10, what=f"{self.role}'s backends to go")

    async def sql(self, template: str, *names: str) -> None:
        """Run a statement on identifiers, quoted by the server (format's %I)."""
        placeholders = ", ".join(f"${n}::text" for n in range(1, len(names) + 1))
        statement = await self.admin.fetchval(
            f"SELECT format('{template}', {placeholders})", *names
        )
        await self.admin.execute(statement)

    def logs(self, service: str) -> str:
        return self.processes[service].log()


@pytest.fixture
async def deployment() -> AsyncIterator[Deployment]:
    await sweep_abandoned_environments()
    await sweep_abandoned_roles()
    env = await create_environment(QUEUES)
    role: AppRole | None = None
    processes: dict[str, ServiceProcess] = {}
    try:
        role = await create_app_role(env)
        port = free_port()
        environ = env.environ(
            DATABASE_URL=database_url_as(env, role),
            API_PORT=str(port),
            PAYMENT_SUCCESS_RATE="0.7",
        )
        processes = {name: ServiceProcess.service(name, environ).start() for name in SERVICES}
        await asyncio.gather(*(wait_ready(p) for p in processes.values()))
        pool = await asyncpg.create_pool(
            env.database_url,
            min_size=1,
            max_size=4,
            server_settings={"default_transaction_read_only": "off"},
        )
        assert pool is not None
        admin = await asyncpg.connect(ADMIN_DATABASE_URL, timeout=10)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                yield Deployment(env, role.name, pool, admin, client, processes)
        finally:
            await admin.close()
            await pool.close()
    finally:
        try:
            await stop_all(list(processes.values()))
        finally:
            # The database first: it holds the role's grants (and the read-only default).
            await drop_environment(env.name)
            if role is not None:
                await drop_app_role(role.name)


# A fault: inflicted on entering, lifted on leaving, whatever happened in between.
Fault = Callable[[Deployment], AbstractAsyncContextManager[None]]


@asynccontextmanager
async def connection_limit_exhausted(deployed: Deployment) -> AsyncIterator[None]:
    """No connection left for the role: every connect fails with 53300, "too many connections
    for role". Its open connections are terminated, so each service has to connect again."""
    await deployed.sql("ALTER ROLE %I CONNECTION LIMIT 0", deployed.role)
    try:
        await deployed.wait_until_no_backend()
        yield
    finally:
        await deployed.sql("ALTER ROLE %I CONNECTION LIMIT -1", deployed.role)


@asynccontextmanager
async def backends_terminated(deployed: Deployment) -> AsyncIterator[None]:
    """The role's backends terminated every 100 ms, as an operator's pg_terminate_backend or a
    fast shutdown does: queries and transactions cut off (57P01, then class 08 on the dead
    connection), reconnects that succeed for a moment."""
    kills = 0

    async def keep_terminating() -> None:
        nonlocal kills
        while True:
            kills += await deployed.terminate_backends()
            await asyncio.sleep(0.1)

    killer = asyncio.create_task(keep_terminating())
    try:
        yield
    finally:
        killer.cancel()
        await asyncio.gather(killer, return_exceptions=True)
    assert kills > 0, "backends were terminated"


@asynccontextmanager
async def database_read_only(deployed: Deployment) -> AsyncIterator[None]:
    """The database read-only, as after a failover to a standby: its sessions started from now
    on refuse every write (25006). The sessions opened before are terminated, so every service
    reconnects into the read-only default. Lifting it terminates nothing: a session keeps the
    default it started with, so a service must itself drop the connections that refused writes."""
    await deployed.sql(
        "ALTER DATABASE %I SET default_transaction_read_only = on", deployed.env.name
    )
    since: datetime = await deployed.admin.fetchval("SELECT clock_timestamp()")
    try:
        await deployed.wait_until_no_backend(started_before=since)
        yield
    finally:
        await deployed.sql(
            "ALTER DATABASE %I RESET default_transaction_read_only", deployed.env.name
        )


async def store_and_relay(deployed: Deployment, skus: list[str], count: int) -> set[str]:
    """Orders stored as the API stores them and published as the publisher publishes them, over
    the test's own connections; their ids."""
    shape = random.Random(41)
    prices = store.PriceBook()
    writer = store.OrderWriter(deployed.pool, max_batch=1, in_flight=1, most_in_flight=1)
    ids = set()
    for n in range(count):
        lines = shape.sample(skus, shape.randint(1, 3))
        request = PlaceOrder.model_validate(
            {
                "customer_id": f"D{n}",
                "email": "during@example.com",
                "items": [{"sku": sku, "qty": shape.randint(1, 2)} for sku in lines],
            }
        )
        ids.add(str((await store.place_order(writer, prices, request)).order.id))
    broker = await connect_once(Settings(rabbitmq_url=deployed.env.rabbitmq_url), "test")
    async with broker:
        exchange = await declare_exchange(await broker.channel(publisher_confirms=True))
        while await relay_outbox_batch(deployed.pool, exchange, 500):
            pass
    return ids


async def _reads_refused(deployed: Deployment, order_id: str) -> None:
    for route in READ_ROUTES:
        response = await deployed.client.get(route.format(id=order_id))
        assert response.status_code == 503, f"GET {route}: {response.status_code} {response.text}"
        assert response.headers.get("Retry-After"), f"GET {route}: 503 without Retry-After"
    health = await deployed.client.get("/health")
    assert health.status_code == 503, f"GET /health: {health.status_code} {health.text}"
    assert health.headers.get("Retry-After"), "GET /health: 503 without Retry-After"


async def _reads_served(deployed: Deployment, order_id: str) -> None:
    for route in READ_ROUTES:
        response = await deployed.client.get(route.format(id=order_id))
        assert response.status_code == 200, f"GET {route}: {response.status_code} {response.text}"


@dataclass(frozen=True)
class DatabaseFault:
    inflict: Fault
    # Whether the consumers surely meet it with events in hand, and the API surely refuses
    # every order while it lasts: not so for terminations, between which work goes on.
    refuses_all_writes: bool
    # What the API's read routes answer while it lasts (None: anything but a 500).
    reads: Callable[[Deployment, str], Awaitable[None]] | None


FAULTS = {
    "connection limit exhausted": DatabaseFault(connection_limit_exhausted, True, _reads_refused),
    "backends terminated": DatabaseFault(backends_terminated, False, None),
    "database read-only": DatabaseFault(database_read_only, True, _reads_served),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
async def test_orders_wait_out_the_database_refusing_work_and_none_is_dead_lettered(
    deployment: Deployment, fault: DatabaseFault
) -> None:
    start_stock = {await add_product(deployment.pool, stock=60): 60 for _ in range(6)}
    skus = list(start_stock)
    clients = Clients(deployment.client, skus)
    # In the pipeline when the fault begins.
    await asyncio.gather(*(clients.place() for _ in range(ORDERS_BEFORE)))
    some_order = next(iter(clients.accepted.values()))

    loop = asyncio.get_running_loop()
    async with fault.inflict(deployment):
        began = loop.time()
        stored = set()
        if fault.refuses_all_writes:
            stored = await store_and_relay(deployment, skus, ORDERS_DURING)
        if fault.reads is not None:
            await fault.reads(deployment, some_order)
        placing = await clients.place_at(CLIENT_RATE, FAULT_SECONDS - (loop.time() - began))
        if fault.refuses_all_writes:
            assert clients.unavailable > 0, "the API answered 503 while the database refused"
            assert len(clients.accepted) == ORDERS_BEFORE, "no order accepted during the fault"
            # The events stored during the fault reached inventory, which could not handle them
            # and held them: retried in place, not requeued.
            assert "database unavailable handling" in deployment.logs("inventory")
    # Lifted: the orders refused meanwhile are accepted on their clients' next try.
    await asyncio.gather(*placing)

    assert clients.refusals == [], "every answer a 201, or a 503 with Retry-After"
    assert "Traceback" not in deployment.logs("api"), "no request failed with an error"
    await assert_pipeline_consistent(
        deployment.pool,
        deployment.env.rabbitmq_url,
        set(clients.accepted.values()) | stored,
        start_stock,
    )
    # And the reconciliation audit finds the run's books balanced (tests/support/audit.py).
    await assert_audit_clean(deployment.pool, deployment.env.settings())
    for consumer in ("inventory", "payment", "notification"):
        # ConsumerRunner.retry_later's line: a message requeued, one of its deliveries spent.
        assert "; will retry" not in deployment.logs(consumer), f"{consumer} requeued a message"
