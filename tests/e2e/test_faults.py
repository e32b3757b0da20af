"""Nothing lost, nothing done twice: orders under load while processes die and servers vanish.

Each test runs its own deployment (two publishers, two of each consumer, one API, their broker
and database connections through proxies the test can cut), places a few hundred orders with
Idempotency-Keys while it injects one fault, then checks every order against the invariants of
tests/support/load.py: nothing lost, nothing done twice, stock and notifications as they should.

Cancellations and expiries are mixed in: every fifth order is cancelled a moment after it was
accepted (racing the pipeline, and the fault), and orders still not final ORDER_TIMEOUT (2.5 s)
after they were placed, which a 3 s outage makes some of, are cancelled by the publishers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest

from acme_orders.core.topology import QUEUES
from tests.support.audit import assert_audit_clean
from tests.support.environment import TestEnvironment, create_environment, drop_environment
from tests.support.faults import TcpProxy
from tests.support.load import Load, assert_pipeline_consistent
from tests.support.processes import ServiceProcess, free_port, stop_all
from tests.support.products import add_product
from tests.support.system import wait_ready
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

ORDERS = 300
RATE = 100  # orders offered per second
OUTAGE_SECONDS = 3.0
ORDER_TIMEOUT = "2.5"
CANCEL_EVERY = 5
INSTANCES = {"publisher": 2, "inventory": 2, "payment": 2, "notification": 2}


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
            ServiceProcess.service(
                # The environment's name in it: each fault's logs are kept, not the last one's.
                service,
                self.environ,
                f"faults-{self.env.name}-{service}-{n}",
            ).start()
            for n in range(INSTANCES.get(service, 1))
        ]
        await asyncio.gather(*(wait_ready(p) for p in self.processes[service]))

    async def kill_and_restart(self, service: str) -> None:
        for process in self.processes[service]:
            process.kill()
        await self.start(service)


@pytest.fixture
async def deployment() -> AsyncIterator[Deployment]:
    env = await create_environment(QUEUES)
    database = await TcpProxy("127.0.0.1", 5432).start()
    broker = await TcpProxy("127.0.0.1", 5672).start()
    port = free_port()
    environ = env.environ(
        DATABASE_URL=env.database_url.replace(":5432/", f":{database.port}/"),
        RABBITMQ_URL=env.rabbitmq_url.replace(":5672/", f":{broker.port}/"),
        API_PORT=str(port),
        PAYMENT_SUCCESS_RATE="0.7",
        OUTBOX_BATCH_SIZE="50",
        ORDER_TIMEOUT=ORDER_TIMEOUT,
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
    load = Load([deployment.client], list(start_stock), cancel_every=CANCEL_EVERY)

    async def inject_at_a_third() -> None:
        await wait_until(
            lambda: _now(len(load.accepted) >= ORDERS // 3), deadline=60, what="a third placed"
        )
        await fault(deployment, load)

    await asyncio.gather(load.run(ORDERS, RATE), inject_at_a_third())

    assert load.rejected == []
    await assert_pipeline_consistent(
        deployment.pool,
        deployment.env.rabbitmq_url,
        set(load.accepted.values()),
        start_stock,
        load.cancels,
    )
    reasons = {
        r["reason"]: r["n"]
        for r in await deployment.pool.fetch(
            "SELECT payload->>'reason' AS reason, count(*) AS n FROM event_outbox "
            "WHERE event_type = 'OrderCancelled' GROUP BY 1"
        )
    }
    answered = [answer.code for answer in load.cancels.values()]
    print(
        f"\n{len(answered)} cancels: {answered.count(200)} answered 200, {answered.count(409)} "
        f"409; cancelled orders by reason: {reasons or 'none'}"
    )
    assert len(answered) == ORDERS // CANCEL_EVERY
    # And the reconciliation audit finds the run's books balanced (tests/support/audit.py).
    await assert_audit_clean(deployment.pool, deployment.env.settings())


async def _now(value: bool) -> bool:
    return value
