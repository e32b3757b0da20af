"""The API called in-process, without a server: the app started (its lifespan run, so its pool
is open) behind an httpx client; and the body of a simple order."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
from fastapi import FastAPI

from acme_orders.core.settings import Settings
from acme_orders.ops.api_keys import Scope, create_key
from acme_orders.order_api.app import create_app


def one_line_order(sku: str = "TSHIRT-BLK-M", qty: int = 1) -> dict[str, object]:
    """A `POST /orders` body of one line, for customer C100."""
    return {"customer_id": "C100", "email": "c100@example.com", "items": [{"sku": sku, "qty": qty}]}


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


async def key_headers(pool: asyncpg.Pool, scope: Scope = Scope.ORDERS_WRITE) -> dict[str, str]:
    """A new API key of the test's own, of `scope`: the headers that send it."""
    token = await create_key(pool, f"test-{secrets.token_hex(6)}", scope)
    return {"Authorization": f"Bearer {token}"}
