"""Each test run's own PostgreSQL database and RabbitMQ vhost (`acme_test_<pid>_<hex>`), made
with the benchmark's scratch module, which the tests share: a run sweeps away what crashed runs
left behind without touching a run that is still going.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from acme_orders.core.settings import Settings
from acme_orders.core.topology import QueueSpec
from acme_orders_bench.scratch import (
    Rabbitmqctl,
    Servers,
    create_scratch,
    drop_scratch,
    new_name,
    sweep_abandoned,
    with_database,
    with_vhost,
)

ADMIN_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RABBITMQ_BASE_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
# How to run rabbitmqctl where the broker runs, split as a shell would: a broker in a container is
# reached with e.g. "docker exec -i acme-test-rabbitmq rabbitmqctl" (scripts/servers.sh).
RABBITMQCTL = shlex.split(os.environ.get("TEST_RABBITMQCTL", "rabbitmqctl"))
PREFIX = "acme_test_"
# The tests connect as the admin role itself: they read and write whatever they check.
SERVERS = Servers(
    base=Settings(database_url=ADMIN_DATABASE_URL, rabbitmq_url=RABBITMQ_BASE_URL),
    admin_url=ADMIN_DATABASE_URL,
    rabbitmqctl=Rabbitmqctl(tuple(RABBITMQCTL)),
)
rabbitmqctl = SERVERS.rabbitmqctl


@dataclass(frozen=True)
class TestEnvironment:
    """A database and a vhost of the same name, and the settings that point at them."""

    __test__ = False  # not a test class, whatever pytest makes of its name

    name: str

    @property
    def database_url(self) -> str:
        return with_database(ADMIN_DATABASE_URL, self.name)

    @property
    def rabbitmq_url(self) -> str:
        return with_vhost(RABBITMQ_BASE_URL, self.name)

    def settings(self, **overrides: object) -> Settings:
        return Settings(
            database_url=self.database_url,
            rabbitmq_url=self.rabbitmq_url,
            **overrides,  # type: ignore[arg-type]
        )

    def environ(self, **overrides: str) -> dict[str, str]:
        """The environment of a service process of this test environment."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "RABBITMQ_"))}
        env.update(
            DATABASE_URL=self.database_url,
            RABBITMQ_URL=self.rabbitmq_url,
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
            # The end-to-end and fault tests place and read orders as the quick start does, with no
            # key, hundreds a second from one address: without these the API would answer them 401
            # and then 429. The tests of keys and limits (test_api_security.py) turn them back on.
            AUTH_DISABLED="1",
            RATE_LIMIT_ORDERS_PER_SECOND="0",
            RATE_LIMIT_READS_PER_SECOND="0",
            # No worker metrics servers unless a test asks for them (the system fixture gives each
            # worker a free port): two copies of a service, or a system running on this machine,
            # would fight over the default ports.
            PUBLISHER_METRICS_PORT="0",
            INVENTORY_METRICS_PORT="0",
            PAYMENT_METRICS_PORT="0",
            NOTIFICATION_METRICS_PORT="0",
        )
        env.update(overrides)
        return env


async def create_environment(queues: Sequence[QueueSpec]) -> TestEnvironment:
    env = TestEnvironment(new_name(PREFIX))
    await create_scratch(SERVERS, env.name, queues)
    return env


async def drop_environment(name: str) -> None:
    await drop_scratch(SERVERS, name)


async def sweep_abandoned_environments() -> None:
    """Drop the databases and vhosts of test runs whose process is gone."""
    await sweep_abandoned(SERVERS, PREFIX)
