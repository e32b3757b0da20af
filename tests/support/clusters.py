"""The clustered servers a test run starts for itself, and a test environment on them.

    run = RunFolder.create()                  # /var/tmp/acme-cluster-<pid>/, crashed runs swept
    rabbitmq = await RabbitCluster.launch(run)  # 3 nodes on loopback
    postgres = await PostgresPair.launch(run)   # primary + synchronous hot standby
    env = await create_cluster_environment(postgres, rabbitmq, CONSUMER_QUEUES)
    ...                                        # env.environ() for `acme-orders run SERVICE`
    await drop_cluster_environment(postgres, rabbitmq, env)
    await rabbitmq.destroy(); await postgres.destroy(); await run.remove()

tests/cluster/conftest.py does this with pytest fixtures.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from acme_orders.core import database, messaging, topology
from acme_orders.core.settings import Settings
from tests.support.environment import TestEnvironment
from tests.support.postgres_pair import PostgresPair
from tests.support.rabbitmq_cluster import RabbitCluster
from tests.support.run_folder import RunFolder

__all__ = [
    "ClusterEnvironment",
    "PostgresPair",
    "RabbitCluster",
    "RunFolder",
    "create_cluster_environment",
    "drop_cluster_environment",
]


@dataclass(frozen=True)
class ClusterEnvironment:
    """A database on the PostgreSQL pair and a vhost on the RabbitMQ cluster, of the same name:
    TestEnvironment's twin, whose URLs name every server, so that a service can follow a
    failover.

    `database_url` is the multi-host DSN (`...?target_session_attrs=read-write`);
    `rabbitmq_url` the comma-separated AMQP URLs of all nodes, as RABBITMQ_URL takes them."""

    __test__ = False  # not a test class, whatever pytest makes of its name

    name: str
    database_url: str
    rabbitmq_urls: tuple[str, ...]

    @property
    def rabbitmq_url(self) -> str:
        return ",".join(self.rabbitmq_urls)

    def settings(self, **overrides: object) -> Settings:
        values = {"database_url": self.database_url, "rabbitmq_url": self.rabbitmq_url}
        return Settings(**(values | overrides))  # type: ignore[arg-type]

    def environ(self, **overrides: str) -> dict[str, str]:
        """The environment of a service process: TestEnvironment's, with these URLs."""
        return TestEnvironment(self.name).environ(
            **{"DATABASE_URL": self.database_url, "RABBITMQ_URL": self.rabbitmq_url, **overrides}
        )


async def create_cluster_environment(
    postgres: PostgresPair, rabbitmq: RabbitCluster, queues: Sequence[topology.QueueSpec]
) -> ClusterEnvironment:
    """A new database and vhost, `acme_test_<pid>_<hex>`: migrated (through the multi-host DSN)
    and with `queues` declared."""
    name = f"acme_test_{os.getpid()}_{secrets.token_hex(4)}"
    env = ClusterEnvironment(name, postgres.dsn(name), tuple(rabbitmq.urls(name)))
    await postgres.create_database(name)
    await rabbitmq.add_vhost(name)
    await database.migrate(env.settings())
    await messaging.declare_topology(env.settings(), queues)
    return env


async def drop_cluster_environment(
    postgres: PostgresPair, rabbitmq: RabbitCluster, env: ClusterEnvironment
) -> None:
    await postgres.drop_database(env.name)
    await rabbitmq.delete_vhost(env.name)
