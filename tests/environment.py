"""Each test run's own PostgreSQL database and RabbitMQ vhost.

Names carry the pid of the run that made them (`acme_test_<pid>_<hex>`), so a run can sweep away
what crashed runs left behind without touching a run that is still going.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import asyncpg

from acme_orders.core import database, messaging, topology
from acme_orders.core.runtime import pid_alive
from acme_orders.core.settings import Settings

ADMIN_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RABBITMQ_BASE_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
RABBITMQ_USER = os.environ.get("TEST_RABBITMQ_USER", "guest")
# How to run rabbitmqctl where the broker runs, split as a shell would: a broker in a container is
# reached with e.g. "docker exec -i acme-test-rabbitmq rabbitmqctl" (scripts/servers.sh).
RABBITMQCTL = shlex.split(os.environ.get("TEST_RABBITMQCTL", "rabbitmqctl"))
NAME_PATTERN = re.compile(r"^acme_test_(\d+)_[0-9a-f]+$")


def rabbitmqctl(*args: str, stdin: str | None = None) -> str:
    executable = shutil.which(RABBITMQCTL[0])
    if executable is None:
        raise RuntimeError(
            f"the tests create RabbitMQ vhosts with {shlex.join(RABBITMQCTL)}, and "
            f"{RABBITMQCTL[0]} is not on PATH (TEST_RABBITMQCTL names another command)"
        )
    result = subprocess.run(
        [executable, *RABBITMQCTL[1:], "-q", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


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
        return RABBITMQ_BASE_URL.rstrip("/") + "/" + quote(self.name, safe="")

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
            # The end-to-end and fault tests place orders as the quick start does, with no key,
            # hundreds a second from one address: without these the API would answer them 401 and
            # then 429. The tests of keys and limits (test_api_security.py) turn them back on.
            AUTH_DISABLED="1",
            RATE_LIMIT_ORDERS_PER_SECOND="0",
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


async def create_environment(queues: Sequence[topology.QueueSpec]) -> TestEnvironment:
    env = TestEnvironment(f"acme_test_{os.getpid()}_{secrets.token_hex(4)}")
    admin = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{env.name}"')
    finally:
        await admin.close()
    await asyncio.to_thread(rabbitmqctl, "add_vhost", env.name)
    await asyncio.to_thread(
        rabbitmqctl, "set_permissions", "-p", env.name, RABBITMQ_USER, ".*", ".*", ".*"
    )
    settings = env.settings()
    await database.migrate(settings)
    await messaging.declare_topology(settings, queues)
    return env


async def drop_environment(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    await asyncio.to_thread(rabbitmqctl, "delete_vhost", name)


async def sweep_abandoned_environments() -> None:
    """Drop the databases and vhosts of test runs whose process is gone."""
    admin = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        databases = [
            r["datname"]
            for r in await admin.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE 'acme_test_%'"
            )
        ]
    finally:
        await admin.close()
    vhosts = (await asyncio.to_thread(rabbitmqctl, "list_vhosts", "name")).split()
    for name in sorted(set(databases) | {v for v in vhosts if v.startswith("acme_test_")}):
        match = NAME_PATTERN.match(name)
        if match and not pid_alive(int(match.group(1))):
            admin = await asyncpg.connect(ADMIN_DATABASE_URL)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()
            if name in vhosts:
                await asyncio.to_thread(rabbitmqctl, "delete_vhost", name)
