"""Fixtures shared by every test that talks to the real servers."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from acme_orders.core.settings import Settings
from acme_orders.core.topology import QUEUES
from tests.support.environment import (
    TestEnvironment,
    create_environment,
    drop_environment,
    sweep_abandoned_environments,
)
from tests.support.processes import clear_output
from tests.support.products import NewProduct, add_product


@pytest.fixture(scope="session", autouse=True)
def fresh_output() -> None:
    clear_output()


@pytest.fixture(scope="session")
async def session_env() -> AsyncIterator[TestEnvironment]:
    """This run's database and vhost, migrated, with the consumers' queues declared."""
    await sweep_abandoned_environments()
    env = await create_environment(QUEUES)
    yield env
    await drop_environment(env.name)


@pytest.fixture
async def fresh_env() -> AsyncIterator[TestEnvironment]:
    """A database and vhost of the test's own, for tests that must see nobody else's events."""
    env = await create_environment(QUEUES)
    yield env
    await drop_environment(env.name)


@pytest.fixture(scope="session")
def settings(session_env: TestEnvironment) -> Settings:
    return session_env.settings()


@pytest.fixture(scope="session")
async def pool(session_env: TestEnvironment) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(session_env.database_url, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture
async def fresh_pool(fresh_env: TestEnvironment) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's own database: every row the test counts is one it wrote."""
    pool = await asyncpg.create_pool(fresh_env.database_url, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture
async def fresh_channel(fresh_env: TestEnvironment) -> AsyncIterator[AbstractChannel]:
    """A channel with publisher confirms on the test's own vhost."""
    connection = await aio_pika.connect(fresh_env.rabbitmq_url)
    async with connection:
        yield await connection.channel(publisher_confirms=True)


@pytest.fixture
def new_product(pool: asyncpg.Pool) -> NewProduct:
    return functools.partial(add_product, pool)
