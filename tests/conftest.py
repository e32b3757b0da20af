"""Fixtures shared by every test that talks to the real servers."""

from __future__ import annotations

import functools
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal

import aio_pika
import asyncpg
import httpx
import pytest
from aio_pika.abc import AbstractChannel
from fastapi import FastAPI

from acme_orders.core.settings import Settings
from acme_orders.core.topology import QUEUES
from acme_orders.order_api.app import create_app
from tests.environment import (
    TestEnvironment,
    create_environment,
    drop_environment,
    sweep_abandoned_environments,
)
from tests.processes import clear_output

NewProduct = Callable[..., Awaitable[str]]


@asynccontextmanager
async def app_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app started (its lifespan run, so its pool is open) and called in-process, without a
    server."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
    ):
        yield client


@asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API of these settings, called in-process."""
    async with app_client(create_app(settings)) as client:
        yield client


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


async def add_product(pool: asyncpg.Pool, stock: int, price: Decimal = Decimal("10.00")) -> str:
    """A product of the test's own, so its stock assertions see no other test's orders."""
    sku = f"TEST-{secrets.token_hex(5).upper()}"
    await pool.execute(
        "INSERT INTO products (sku, name, price, stock_qty) VALUES ($1, $2, $3, $4)",
        sku,
        f"test product {sku}",
        price,
        stock,
    )
    return sku


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


async def stock_of(pool: asyncpg.Pool, sku: str) -> int:
    stock: int = await pool.fetchval("SELECT stock_qty FROM products WHERE sku = $1", sku)
    return stock
