"""The HTTP routes: orders, products, health."""

from __future__ import annotations

import logging
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status

from acme_orders.observability.logs import log_context
from acme_orders.observability.metrics import EVENTS_EMITTED
from acme_orders.ops.privacy import mask_emails_in
from acme_orders.order_api import store
from acme_orders.order_api.request_context import RequestId
from acme_orders.order_api.schemas import (
    Health,
    OrderOut,
    OrderPage,
    OrderQuery,
    PlaceOrder,
    Problem,
    ProductOut,
)
from acme_orders.order_api.security import OrderPlacer, Reader

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
# Each new order writes one OrderPlaced to the outbox, in its transaction.
ORDER_PLACED_EMITTED = EVENTS_EMITTED.labels("api", "OrderPlaced")
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


# Every error the API can answer, for the OpenAPI document: a client (and Schemathesis) can rely on
# each status code being declared, with the body it comes with.
_PROBLEMS: dict[int, dict[str, Any]] = {
    400: {"description": "The body could not be read at all (it is not UTF-8, say)."},
    401: {
        "description": "No API key, or one that is unknown or revoked.",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    403: {"description": "The API key's scope does not allow this."},
    404: {"description": "No order has this id (or none that this API key may read)."},
    413: {"description": "The body is larger than MAX_REQUEST_BYTES."},
    422: {"description": "The request is not valid; `detail` says why."},
    429: {
        "description": "Too many orders from this API key; try again after Retry-After seconds.",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
    503: {
        "description": "The database is unavailable; nothing was stored.",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}


def problems(*codes: int, saying: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that can answer these error codes; `saying` replaces the
    generic description of some of them with the route's own."""
    return {
        code: _PROBLEMS[code]
        | {"model": Problem}
        | ({"description": saying[code]} if saying and code in saying else {})
        for code in codes
    }


@orders.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=problems(
        400,
        401,
        403,
        413,
        422,
        429,
        503,
        saying={
            403: "The API key's scope is not orders:write.",
            422: (
                "The order is not valid, or its Idempotency-Key was used for a different request; "
                "`detail` says why."
            ),
            503: (
                "The database is unavailable, or the prices of the order's products kept "
                "changing while it was placed; nothing was stored, try again."
            ),
        },
    ),
)
async def place_order(
    body: PlaceOrder,
    pool: Pool,
    prices: Prices,
    response: Response,
    caller: OrderPlacer,
    request_id: RequestId,
    idempotency_key: IdempotencyKey = None,
) -> OrderOut:
    """Accept an order: it is stored as `pending` with its OrderPlaced event in one transaction,
    and moves on through inventory, payment and notification on its own. Needs an orders:write
    key; the order belongs to that key."""
    try:
        placed = await store.place_order(
            pool, prices, body, idempotency_key, owner=caller.owner, correlation_id=request_id
        )
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
        with log_context(order_id=order.id):
            logger.info("order %s returned again for its Idempotency-Key", order.id)
    else:
        ORDER_PLACED_EMITTED.inc()
        with log_context(order_id=order.id):
            logger.info(
                "order %s placed by %s%s: %s",
                order.id,
                mask_emails_in(order.customer_id),
                f" with key {caller.key.name}" if caller.key else "",
                ", ".join(f"{line.sku} x{line.qty}" for line in order.items),
            )
    return order


@orders.get("/{order_id}", responses=problems(401, 403, 404, 422, 503))
async def get_order(order_id: UUID, pool: Pool, caller: Reader) -> OrderOut:
    """The order. An orders:write key reads only the orders it placed: another's is a 404, as
    if it did not exist, so that order ids cannot be probed."""
    order = await store.get_order(pool, order_id, only_of=caller.only_orders_of)
    if order is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"order {order_id} not found")
    return order


async def single_valued_query(request: Request) -> None:
    """Refuse a query parameter given twice: which of `?status=paid&status=pending` was meant
    cannot be known, and taking the last one quietly answers a question not asked."""
    names = [name for name, _ in request.query_params.multi_items()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"query parameters given more than once: {', '.join(repeated)}",
        )


@orders.get(
    "",
    responses=problems(401, 403, 422, 503),
    dependencies=[Depends(single_valued_query)],
)
async def list_orders(
    pool: Pool, caller: Reader, query: Annotated[OrderQuery, Query()]
) -> OrderPage:
    """Orders, newest first, optionally for one customer and/or in one status. An orders:write
    key sees only the orders it placed; an admin key sees all."""
    page = await store.list_orders(
        pool,
        customer_id=query.customer_id,
        status=query.status,
        limit=query.limit,
        offset=query.offset,
        only_of=caller.only_orders_of,
    )
    return OrderPage(
        items=page,
        limit=query.limit,
        offset=query.offset,
        next_offset=query.offset + query.limit if len(page) == query.limit else None,
    )


@products.get("", responses=problems(401, 403, 503))
async def list_products(pool: Pool, _caller: Reader) -> list[ProductOut]:
    """The catalogue with current stock; any key may read it."""
    return await store.list_products(pool)


# Open to all: it is the healthcheck of docker compose and of load balancers, and says nothing
# about orders.
@health.get("", responses={503: {"model": Health, "description": "The database does not answer."}})
async def check_health(pool: Pool, response: Response) -> Health:
    """200 when the database answers, 503 when it does not."""
    try:
        await pool.fetchval("SELECT 1", timeout=2)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Health(status="unavailable", database="down")
    return Health(status="ok", database="up")
