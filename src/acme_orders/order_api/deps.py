"""Every dependency the API's routes take, as `Annotated` aliases: the pool, the price book, the
order writer, the request's id, and who the caller is (with the scope and the rate limit each
route needs). Routes import what they take from here."""

from __future__ import annotations

import uuid
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials

from acme_orders.ops.api_keys import Scope
from acme_orders.order_api import store
from acme_orders.order_api.request_context import SCOPE_KEY
from acme_orders.order_api.security import (
    Caller,
    bearer,
    limit_order_rate,
    limit_read_rate,
    require_scope,
)


# async: FastAPI runs a plain `def` dependency in a thread pool, a thread hop on every request.
async def get_pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


Pool = Annotated[asyncpg.Pool, Depends(get_pool)]
# The key itself, as sent: for a stream that checks it again while it stays open.
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def get_price_book(request: Request) -> store.PriceBook:
    price_book: store.PriceBook = request.app.state.price_book
    return price_book


Prices = Annotated[store.PriceBook, Depends(get_price_book)]


async def get_order_writer(request: Request) -> store.OrderWriter:
    order_writer: store.OrderWriter = request.app.state.order_writer
    return order_writer


OrderWriter = Annotated[store.OrderWriter, Depends(get_order_writer)]


async def get_request_id(request: Request) -> str:
    """The id RequestContext gave the request (a new one if it did not run)."""
    request_id = request.scope.get(SCOPE_KEY)
    return request_id if isinstance(request_id, str) else uuid.uuid4().hex


RequestId = Annotated[str, Depends(get_request_id)]


OrderPlacer = Annotated[Caller, Depends(limit_order_rate)]
# Reads orders (an orders:write key only its own) and the catalogue, rate limited.
Reader = Annotated[Caller, Depends(limit_read_rate)]
# The board: what only an operator may see.
Admin = Annotated[Caller, Depends(require_scope(Scope.ADMIN))]
# The API's metrics: a metrics key (Prometheus', which reads nothing else) or an operator's admin
# key. Not orders:write: the figures tell a client how busy the whole shop is.
MetricsScraper = Annotated[Caller, Depends(require_scope(Scope.METRICS, Scope.ADMIN))]
