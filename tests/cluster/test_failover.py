"""The guarantees on clustered servers, while they fail: a 3-node RabbitMQ cluster whose node
leading the quorum queues is killed (or another one stopped), and a PostgreSQL primary killed and
its synchronous standby promoted, each under a steady load with two of every service.

Every service is given every node: RABBITMQ_URL lists the three (each process starting at another,
so that their connections spread over the cluster) and DATABASE_URL is libpq's multi-host form
with target_session_attrs=read-write. After each fault the invariants of tests/support/load.py
hold (nothing lost, nothing done twice, every DLQ empty), no answer of the API was a 500 (a 503
while the primary is away is fine: the client retries with its Idempotency-Key), and the longest
time an order took from placement to its final status is reported, with the run's logs
(test-output/run-<pid>/failover-delays.txt) and on the terminal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import httpx
import pytest

from tests.support.clusters import ClusterEnvironment, PostgresPair, RabbitCluster
from tests.support.load import Load, assert_pipeline_consistent
from tests.support.processes import OUTPUT_DIR, ServiceProcess, free_port, stop_all
from tests.support.products import add_product
from tests.support.system import wait_ready
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.faults]

ORDERS = 450
RATE = 30  # orders offered per second: 15 s of load, the fault a third of the way in
# How long a node or the primary stays away: long enough for every connection to notice and
# move, as an operator or a failover controller would take.
OUTAGE_SECONDS = 5.0
INSTANCES = {"api": 2, "publisher": 2, "inventory": 2, "payment": 2, "notification": 2}


@dataclass
class ClusterDeployment:
    env: ClusterEnvironment
    rabbitmq: RabbitCluster
    postgres: PostgresPair
    pool: asyncpg.Pool
    clients: list[httpx.AsyncClient]
    processes: list[ServiceProcess]


def environ_of(env: ClusterEnvironment, n: int, **overrides: str) -> dict[str, str]:
    """Process n of a service: every node, listed from its own first one on."""
    nodes = list(env.rabbitmq_urls)
    first = n % len(nodes)
    return env.environ(
        RABBITMQ_URL=",".join(nodes[first:] + nodes[:first]),
        PAYMENT_SUCCESS_RATE="0.7",
        OUTBOX_BATCH_SIZE="50",
        **overrides,
    )


@pytest.fixture
async def deployment(
    cluster_env: ClusterEnvironment, rabbitmq_cluster: RabbitCluster, postgres_pair: PostgresPair
) -> AsyncIterator[ClusterDeployment]:
    api_ports = [free_port() for _ in range(INSTANCES["api"])]
    processes = [
        ServiceProcess.service(
            service,
            environ_of(
                cluster_env, n, **({"API_PORT": str(api_ports[n])} if service == "api" else {})
            ),
            f"failover-{service}-{n}",
        ).start()
        for service, count in INSTANCES.items()
        for n in range(count)
    ]
    pool = await asyncpg.create_pool(cluster_env.database_url, min_size=1, max_size=4)
    assert pool is not None
    async with AsyncExitStack() as stack:
        try:
            await asyncio.gather(*(wait_ready(p) for p in processes))
            clients = [
                await stack.enter_async_context(
                    httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)
                )
                for port in api_ports
            ]
            yield ClusterDeployment(
                cluster_env, rabbitmq_cluster, postgres_pair, pool, clients, processes
            )
        finally:
            try:
                await stop_all(processes)
            finally:
                await pool.close()


@dataclass(frozen=True)
class Happened:
    what: str
    # For a broker node's outage: from when it went down until it was back, by the database's
    # clock, when the pipeline should have gone on without it.
    node_away: tuple[datetime, datetime] | None = None


Failover = Callable[[ClusterDeployment, Load], Awaitable[Happened]]


async def db_now(pool: asyncpg.Pool) -> datetime:
    now: datetime = await pool.fetchval("SELECT clock_timestamp()")
    return now


async def kill_the_leader_then_restart_it(deployed: ClusterDeployment, load: Load) -> Happened:
    cluster = deployed.rabbitmq
    leader = await cluster.leader_of_most_queues(deployed.env.name)
    await cluster.kill(leader)
    down = await db_now(deployed.pool)
    await asyncio.sleep(OUTAGE_SECONDS)  # the outage's length, not a wait for a result
    await cluster.start(leader)
    # Away until its start returns: on a busy machine a node takes seconds to boot.
    back = await db_now(deployed.pool)
    return Happened(
        f"kill -9 {leader.name} (leader of most queues), restarted {OUTAGE_SECONDS:g} s later",
        (down, back),
    )


async def stop_another_node_then_start_it(deployed: ClusterDeployment, load: Load) -> Happened:
    cluster = deployed.rabbitmq
    leader = await cluster.leader_of_most_queues(deployed.env.name)
    other = next(node for node in cluster.nodes if node != leader)
    await cluster.stop(other)
    down = await db_now(deployed.pool)
    await asyncio.sleep(OUTAGE_SECONDS)
    await cluster.start(other)
    back = await db_now(deployed.pool)
    return Happened(
        f"rabbitmqctl stop {other.name}, started {OUTAGE_SECONDS:g} s later", (down, back)
    )


async def kill_the_primary_then_promote_the_standby(
    deployed: ClusterDeployment, load: Load
) -> Happened:
    pair = deployed.postgres
    killed = await pair.kill_primary()
    unavailable_before = load.unavailable
    # A failover controller notices and promotes: meanwhile there is no primary.
    await asyncio.sleep(OUTAGE_SECONDS)
    promoted = await pair.promote_standby()
    assert load.unavailable > unavailable_before, "the API answered 503 while there was no primary"
    return Happened(
        f"kill -9 primary {killed.name}, standby {promoted.name} promoted "
        f"{OUTAGE_SECONDS:g} s later"
    )


FAILOVERS: dict[str, Failover] = {
    "rabbitmq leader killed": kill_the_leader_then_restart_it,
    "rabbitmq node stopped": stop_another_node_then_start_it,
    "postgres primary killed, standby promoted": kill_the_primary_then_promote_the_standby,
}


@pytest.mark.parametrize("failover", FAILOVERS.values(), ids=FAILOVERS.keys())
async def test_every_order_survives_the_failover_exactly_once(
    deployment: ClusterDeployment, failover: Failover, request: pytest.FixtureRequest
) -> None:
    start_stock = {await add_product(deployment.pool, stock=80): 80 for _ in range(6)}
    load = Load(deployment.clients, list(start_stock))
    happened: list[Happened] = []

    # The load goes on until the fault is over: a node's stop or boot can take longer than the
    # rest of the ORDERS on a slow machine, and then no order would be left to finish meanwhile.
    fault_over = asyncio.Event()

    async def inject_at_a_third() -> None:
        try:
            await wait_until(
                lambda: asyncio.sleep(0, len(load.accepted) >= ORDERS // 3),
                deadline=60,
                what="a third placed",
            )
            happened.append(await failover(deployment, load))
        finally:
            fault_over.set()

    began = time.monotonic()
    await asyncio.gather(load.run(ORDERS, RATE, until=fault_over), inject_at_a_third())

    # No 500, nor any other answer but 201 and the 503s the load retried.
    assert load.rejected == []
    await assert_pipeline_consistent(
        deployment.pool, deployment.env.rabbitmq_url, set(load.accepted.values()), start_stock
    )
    delays = await deployment.pool.fetchrow(
        """
        SELECT max(updated_at - created_at) AS longest,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY updated_at - created_at) AS p99,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY updated_at - created_at) AS p50
        FROM orders WHERE id = ANY($1::uuid[])
        """,
        list(load.accepted.values()),
    )
    assert delays is not None
    [fault] = happened
    if fault.node_away:
        # The cluster went on without the node: orders finished while it was away.
        finished_meanwhile = await deployment.pool.fetchval(
            """
            SELECT count(*) FROM orders
            WHERE id = ANY($1::uuid[]) AND updated_at BETWEEN $2 AND $3
              AND status IN ('paid', 'payment_failed', 'out_of_stock')
            """,
            list(load.accepted.values()),
            *fault.node_away,
        )
        assert finished_meanwhile > 0, "no order finished while a broker node was away"
    longest, p99, p50 = (delays[k].total_seconds() for k in ("longest", "p99", "p50"))
    line = (
        f"{request.node.callspec.id}: {fault.what}; {len(load.accepted)} orders in "
        f"{time.monotonic() - began:.0f} s, {load.unavailable} answers 503, 0 answers 500; "
        f"placed -> final: longest {longest:.2f} s, p99 {p99:.2f} s, p50 {p50 * 1000:.0f} ms"
    )
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    with (OUTPUT_DIR / "failover-delays.txt").open("a") as out:
        out.write(line + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[failover] {line}")
