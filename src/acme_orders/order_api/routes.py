"""The HTTP routes: orders, products, health."""

from __future__ import annotations

import logging
from typing import Annotated
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status

from acme_orders.order_api import store
from acme_orders.order_api.schemas import Health, OrderOut, OrderPage, PlaceOrder, ProductOut
from acme_orders.orders import OrderStatus

logger = logging.getLogger(__name__)


# async: FastAPI runs a plain `def` dependency in a thread pool, a thread hop on every request.
async def get_pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


Pool = Annotated[asyncpg.Pool, Depends(get_pool)]


async def get_price_book(request: Request) -> store.PriceBook:
    price_book: store.PriceBook = request.app.state.price_book
    return price_book


Prices = Annotated[store.PriceBook, Depends(get_price_book)]

orders = APIRouter(prefix="/orders", tags=["orders"])
products = APIRouter(prefix="/products", tags=["products"])
health = APIRouter(prefix="/health", tags=["health"])


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description=(
            "Any unique string (a UUID, say). A retry with the same key and body returns the "
            "order the first request created instead of placing a second one."
        ),
    ),
]


@orders.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        413: {"description": "The body is larger than MAX_REQUEST_BYTES."},
        422: {
            "description": (
                "The order is not valid, or its Idempotency-Key was used for a different "
                "request; `detail` says why."
            )
        },
        503: {
            "description": (
                "The database is unavailable, or the prices of the order's products kept "
                "changing while it was placed; nothing was stored, try again."
            )
        },
    },
)
async def place_order(
    body: PlaceOrder,
    pool: Pool,
    prices: Prices,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> OrderOut:
    """Accept an order: it is stored as `pending` with its OrderPlaced event in one transaction,
    and moves on through inventory, payment and notification on its own."""
    try:
        placed = await store.place_order(pool, prices, body, idempotency_key)
    except (store.UnknownSkuError, store.IdempotencyKeyReusedError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    except store.PricesChangedError as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "prices changed while the order was placed; nothing was stored, try again",
            headers={"Retry-After": "1"},
        ) from exc
    order = placed.order
    response.headers["Location"] = f"/orders/{order.id}"
    if placed.replayed:
        response.headers["Idempotent-Replayed"] = "true"
        logger.info("order %s returned again for its Idempotency-Key", order.id)
    else:
        logger.info(
            "order %s placed by %s: %s",
            order.id,
            order.customer_id,
            ", ".join(f"{line.sku} x{line.qty}" for line in order.items),
        )
    return order


@orders.get("/{order_id}", responses={404: {"description": "No order has this id."}})
async def get_order(order_id: UUID, pool: Pool) -> OrderOut:
    order = await store.get_order(pool, order_id)
    if order is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"order {order_id} not found")
    return order


@orders.get("")
async def list_orders(
    pool: Pool,
    customer_id: Annotated[str | None, Query(max_length=64)] = None,
    status: OrderStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> OrderPage:
    """Orders, newest first, optionally for one customer and/or in one status."""
    page = await store.list_orders(
        pool, customer_id=customer_id, status=status, limit=limit, offset=offset
    )
    return OrderPage(
        items=page,
        limit=limit,
        offset=offset,
        next_offset=offset + limit if len(page) == limit else None,
    )


@products.get("")
async def list_products(pool: Pool) -> list[ProductOut]:
    """The catalogue with current stock."""
    return await store.list_products(pool)


@health.get("", responses={503: {"description": "The database does not answer."}})
async def check_health(pool: Pool, response: Response) -> Health:
    """200 when the database answers, 503 when it does not."""
    try:
        await pool.fetchval("SELECT 1", timeout=2)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Health(status="unavailable", database="down")
    return Health(status="ok", database="up")
