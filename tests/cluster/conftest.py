"""Fixtures of the cluster suite: a 3-node RabbitMQ cluster and a PostgreSQL primary with a
synchronous hot standby, of this run's own, on loopback (see tests/support/).

The servers start once for the suite (about 15-20 s for RabbitMQ, 2 s for PostgreSQL) and are
shared: a test may kill, stop and promote as it likes, and the next test finds them healed
(every RabbitMQ node running; a primary with a synchronous standby, maybe on the other server).
Each test gets a database and vhost of its own from `cluster_env`. When the suite's last test is
done (package scope: not at the end of the run, so the later tests do not share the CPU with
three idle Erlang VMs), every process is killed and the run folder removed, also when a test
failed.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import AsyncIterator

import pytest

from acme_orders.core.topology import QUEUES
from tests.support.clusters import (
    ClusterEnvironment,
    PostgresPair,
    RabbitCluster,
    RunFolder,
    create_cluster_environment,
    drop_cluster_environment,
)
from tests.support.postgres_pair import PG_BIN
from tests.support.processes import OUTPUT_DIR
from tests.support.rabbitmq_cluster import SERVER
from tests.support.run_folder import processes_of

logger = logging.getLogger(__name__)


def _missing() -> str | None:
    if os.environ.get("TEST_CLUSTER") == "0":
        return "TEST_CLUSTER=0: the cluster tests are turned off"
    if os.geteuid() != 0:
        return "the cluster fixtures run PostgreSQL as the postgres OS user: they need root"
    for program in (SERVER, PG_BIN / "initdb", PG_BIN / "pg_basebackup"):
        if not program.exists():
            return f"{program} is missing (Debian's rabbitmq-server and postgresql-15)"
    if shutil.which("epmd") is None:
        return "epmd is missing (Debian's erlang-base)"
    return None


def _record(what: str, timings: list[tuple[str, float]]) -> None:
    """Keep how long each start and control took, beside the services' logs."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    with (OUTPUT_DIR / "cluster-timings.txt").open("a") as out:
        for name, seconds in timings:
            out.write(f"{what}: {name}: {seconds:.2f}s\n")


@pytest.fixture(scope="package")
async def cluster_run() -> AsyncIterator[RunFolder]:
    """This run's folder, /var/tmp/acme-cluster-<pid>/, after sweeping those of crashed runs;
    removed, with every process still running under it, once the suite is done."""
    if reason := _missing():
        pytest.skip(reason)
    run = RunFolder.create()
    try:
        yield run
    finally:
        await run.remove()
        assert processes_of(run.path) == [], "a process of the run outlived it"
        assert not run.path.exists()


@pytest.fixture(scope="package")
async def _rabbitmq_cluster(cluster_run: RunFolder) -> AsyncIterator[RabbitCluster]:
    cluster = await RabbitCluster.launch(cluster_run)
    try:
        yield cluster
    finally:
        _record("rabbitmq", cluster.timings)
        await cluster.destroy()


@pytest.fixture(scope="package")
async def _postgres_pair(cluster_run: RunFolder) -> AsyncIterator[PostgresPair]:
    pair = await PostgresPair.launch(cluster_run)
    try:
        yield pair
    finally:
        _record("postgres", pair.timings)
        await pair.destroy()


@pytest.fixture
async def rabbitmq_cluster(_rabbitmq_cluster: RabbitCluster) -> RabbitCluster:
    """The run's RabbitMQ cluster with all three nodes running."""
    await _rabbitmq_cluster.heal()
    return _rabbitmq_cluster


@pytest.fixture
async def postgres_pair(_postgres_pair: PostgresPair) -> PostgresPair:
    """The run's PostgreSQL pair: a primary and its synchronous standby, streaming."""
    await _postgres_pair.heal()
    return _postgres_pair


@pytest.fixture
async def cluster_env(
    postgres_pair: PostgresPair, rabbitmq_cluster: RabbitCluster
) -> AsyncIterator[ClusterEnvironment]:
    """A database and vhost of the test's own on the clustered servers, migrated, with the
    consumers' queues declared (quorum queues with a member on each node)."""
    env = await create_cluster_environment(postgres_pair, rabbitmq_cluster, QUEUES)
    yield env
    # Hygiene only (the servers go at the end of the run): a test may leave them half down.
    await postgres_pair.heal()
    await rabbitmq_cluster.heal()
    await drop_cluster_environment(postgres_pair, rabbitmq_cluster, env)
