"""The order routes: POST /orders, GET /orders/{id}, POST /orders/{id}/cancel and GET /orders."""

from __future__ import annotations

import logging
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse

from acme_orders.core.observability.logs import log_context
from acme_orders.core.observability.metrics import EVENTS_EMITTED
from acme_orders.ops.privacy import mask_emails_in
from acme_orders.order_api import store
from acme_orders.order_api.deps import (
    OrderPlacer,
    OrderWriter,
    Pool,
    Prices,
    Reader,
    RequestId,
)
from acme_orders.order_api.paging import cursor_after
from acme_orders.order_api.responses import problems
from acme_orders.order_api.schemas import (
    OrderIsFinal,
    OrderOut,
    OrderPage,
    OrderQuery,
    PlaceOrder,
)
from acme_orders.order_api.security import Caller

logger = logging.getLogger(__name__)


orders = APIRouter(prefix="/orders", tags=["orders"])
# Each new order writes one OrderPlaced to the outbox, in its transaction.
ORDER_PLACED_EMITTED = EVENTS_EMITTED.labels("api", "OrderPlaced")


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
                "The database is unavailable or busy (no connection came free in time, a "
                "statement ran past its timeout, the API took on all it can), or the prices of the "
                "order's products kept changing while it was placed. Nothing was stored: retry "
                "after Retry-After seconds with the same Idempotency-Key, which places the order "
                "once however many times it is sent."
            ),
        },
    ),
)
async def place_order(
    body: PlaceOrder,
    writer: OrderWriter,
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
            writer, prices, body, idempotency_key, owner=caller.owner, correlation_id=request_id
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
                _by_key(caller),
                ", ".join(f"{line.sku} x{line.qty}" for line in order.items),
            )
    return order


@orders.get("/{order_id}", responses=problems(401, 403, 404, 422, 429, 503))
async def get_order(order_id: UUID, pool: Pool, caller: Reader) -> OrderOut:
    """The order. An orders:write key reads only the orders it placed: another's is a 404, as
    if it did not exist, so that order ids cannot be probed."""
    order = await store.get_order(pool, order_id, only_of=caller.only_orders_of)
    if order is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"order {order_id} not found")
    return order


ORDER_CANCELLED_EMITTED = EVENTS_EMITTED.labels("api", "OrderCancelled")


@orders.post(
    "/{order_id}/cancel",
    # The 409 is a JSONResponse of its own (OrderIsFinal), which FastAPI passes through as it is.
    response_model=OrderOut,
    responses=problems(401, 403, 404, 422, 429, 503)
    | {
        409: {
            "model": OrderIsFinal,
            "description": (
                "The order already ended another way (paid, payment_failed or out_of_stock) and "
                "keeps that status; `status` says which."
            ),
        }
    },
)
async def cancel_order(
    order_id: UUID, pool: Pool, caller: OrderPlacer, request_id: RequestId
) -> OrderOut | JSONResponse:
    """Cancel an order that is not final yet: it becomes `cancelled`, with an OrderCancelled
    event in the same transaction; the stock it held goes back and it is never charged. Cancelling
    a cancelled order again changes nothing and answers the same. Needs the orders:write key
    that placed the order."""
    try:
        cancelled = await store.cancel_order(
            pool, order_id, only_of=caller.only_orders_of, correlation_id=request_id
        )
    except store.OrderIsFinalError as exc:
        return JSONResponse(
            OrderIsFinal(detail=str(exc), status=exc.status).model_dump(mode="json"),
            status_code=status.HTTP_409_CONFLICT,
        )
    if cancelled is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"order {order_id} not found")
    if not cancelled.earlier:
        ORDER_CANCELLED_EMITTED.inc()
        with log_context(order_id=order_id):
            logger.info("order %s cancelled on request%s", order_id, _by_key(caller))
    return cancelled.order


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
    responses=problems(
        401,
        403,
        422,
        429,
        503,
        saying={422: "A filter is not valid, or the cursor is not one this API gave out."},
    ),
    dependencies=[Depends(single_valued_query)],
)
async def list_orders(
    pool: Pool, caller: Reader, query: Annotated[OrderQuery, Query()]
) -> OrderPage:
    """Orders, newest first, optionally for one customer and/or in one status, a page at a time:
    pass a page's `next_cursor` as `cursor` for the next one. An orders:write key sees only the
    orders it placed; an admin key sees all."""
    page = await store.list_orders(
        pool,
        customer_id=query.customer_id,
        status=query.status,
        limit=query.limit,
        after=query.after,
        only_of=caller.only_orders_of,
    )
    return OrderPage(
        items=page.orders,
        limit=query.limit,
        next_cursor=cursor_after(page.next_page_after) if page.next_page_after else None,
    )


def _by_key(caller: Caller) -> str:
    return f" with key {caller.key.name}" if caller.key else ""
