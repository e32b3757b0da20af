"""The API's SQL: placing an order with its outbox event, and reading orders and products."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

import asyncpg

from acme_orders.events import OrderLine, OrderPlaced
from acme_orders.order_api.schemas import OrderLineOut, OrderOut, PlaceOrder, ProductOut
from acme_orders.orders import OrderStatus

ORDER_COLUMNS = "id, customer_id, email, status, total, created_at, updated_at"
TRANSIENT_ATTEMPTS = 3


class UnknownSkuError(Exception):
    def __init__(self, skus: Sequence[str]) -> None:
        super().__init__(f"unknown sku: {', '.join(skus)}")
        self.skus = skus


class IdempotencyKeyReusedError(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used with a different request; "
            "use a new key for a new order"
        )


class _KeyTakenMeanwhileError(Exception):
    """Another request with the same Idempotency-Key committed while this one ran."""


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    order: OrderOut
    # True when an earlier request with the same Idempotency-Key created the order.
    replayed: bool


async def place_order(
    pool: asyncpg.Pool, request: PlaceOrder, idempotency_key: str | None = None
) -> PlacedOrder:
    """Store the order, its lines at today's prices, and its OrderPlaced event, atomically.

    With an Idempotency-Key, a retry of the same request returns the order the first one made,
    and a different request with the same key is refused."""
    request_hash = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
    if idempotency_key is not None:
        earlier = await _order_for_key(pool, idempotency_key, request_hash)
        if earlier is not None:
            return PlacedOrder(earlier, replayed=True)
    try:
        order = await _insert_order_retrying(pool, request, idempotency_key, request_hash)
    except _KeyTakenMeanwhileError:
        assert idempotency_key is not None
        earlier = await _order_for_key(pool, idempotency_key, request_hash)
        assert earlier is not None
        return PlacedOrder(earlier, replayed=True)
    return PlacedOrder(order, replayed=False)


async def _order_for_key(pool: asyncpg.Pool, key: str, request_hash: str) -> OrderOut | None:
    row = await pool.fetchrow(
        "SELECT request_hash, order_id FROM idempotency_keys WHERE key = $1", key
    )
    if row is None:
        return None
    if row["request_hash"] != request_hash:
        raise IdempotencyKeyReusedError(key)
    return await get_order(pool, row["order_id"])


async def _insert_order_retrying(
    pool: asyncpg.Pool, request: PlaceOrder, idempotency_key: str | None, request_hash: str
) -> OrderOut:
    """The database may pick this transaction as a deadlock or serialization victim; nothing of
    it was stored then, so it is simply run again."""
    for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
        try:
            return await _insert_order(pool, request, idempotency_key, request_hash)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == TRANSIENT_ATTEMPTS:
                raise
            await asyncio.sleep(0.01 * attempt)
    raise AssertionError("unreachable")


# One statement: one round trip, and PostgreSQL runs it as one transaction, so the order, its
# lines, its OrderPlaced row in the outbox and its Idempotency-Key are stored together or not at
# all. With a key ($12), everything else is stored only if this statement claimed it: a concurrent
# request with the same key waits here until the first commits, then finds the key taken, stores
# nothing and returns no row. The outbox columns are those of outbox.add_to_outbox.
PLACE_ORDER = f"""
WITH claimed_key AS (
    INSERT INTO idempotency_keys (key, request_hash, order_id)
    SELECT $12, $13, $1 WHERE $12::text IS NOT NULL
    ON CONFLICT (key) DO NOTHING
    RETURNING key
), go AS (
    SELECT $12::text IS NULL OR EXISTS (SELECT FROM claimed_key) AS ok
), new_order AS (
    INSERT INTO orders (id, customer_id, email, total)
    SELECT $1, $2, $3, $4 FROM go WHERE go.ok
    RETURNING {ORDER_COLUMNS}
), new_lines AS (
    INSERT INTO order_items (order_id, sku, qty, unit_price)
    SELECT $1, line.* FROM go, unnest($5::text[], $6::int[], $7::numeric[]) AS line WHERE go.ok
), new_event AS (
    INSERT INTO event_outbox (event_id, event_type, routing_key, order_id, payload)
    SELECT $8, $9, $10, $1, $11::jsonb FROM go WHERE go.ok
)
SELECT * FROM new_order
"""


async def _insert_order(
    pool: asyncpg.Pool, request: PlaceOrder, idempotency_key: str | None, request_hash: str
) -> OrderOut:
    # Sorted, so that the foreign-key locks on products are taken in one order by everyone.
    lines_in = sorted(request.items, key=lambda line: line.sku)
    skus = [line.sku for line in lines_in]
    prices: dict[str, Decimal] = {
        r["sku"]: r["price"]
        for r in await pool.fetch(
            "SELECT sku, price FROM products WHERE sku = ANY($1::text[])", skus
        )
    }
    unknown = [sku for sku in skus if sku not in prices]
    if unknown:
        raise UnknownSkuError(unknown)
    lines = [
        OrderLine(sku=line.sku, qty=line.qty, unit_price=prices[line.sku]) for line in lines_in
    ]
    total = sum((line.unit_price * line.qty for line in lines), Decimal("0.00"))
    event = OrderPlaced(
        order_id=uuid.uuid4(),
        customer_id=request.customer_id,
        email=request.email,
        items=tuple(lines),
        total=total,
    )
    order = await pool.fetchrow(
        PLACE_ORDER,
        event.order_id,
        request.customer_id,
        request.email,
        total,
        skus,
        [line.qty for line in lines],
        [line.unit_price for line in lines],
        event.event_id,
        event.event_type,
        event.routing_key,
        event.model_dump_json(),
        idempotency_key,
        request_hash,
    )
    if order is None:
        raise _KeyTakenMeanwhileError
    return _order_out(order, [_line_out(line.sku, line.qty, line.unit_price) for line in lines])


async def get_order(pool: asyncpg.Pool, order_id: UUID) -> OrderOut | None:
    orders = await _with_items(pool, f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1", order_id)
    return orders[0] if orders else None


async def list_orders(
    pool: asyncpg.Pool,
    *,
    customer_id: str | None,
    status: OrderStatus | None,
    limit: int,
    offset: int,
) -> list[OrderOut]:
    """Newest first; a filter left as None matches every order."""
    return await _with_items(
        pool,
        f"""
        SELECT {ORDER_COLUMNS} FROM orders
        WHERE ($1::text IS NULL OR customer_id = $1)
          AND ($2::text IS NULL OR status = $2)
        ORDER BY created_at DESC, id
        LIMIT $3 OFFSET $4
        """,
        customer_id,
        status.value if status else None,
        limit,
        offset,
    )


async def list_products(pool: asyncpg.Pool) -> list[ProductOut]:
    rows = await pool.fetch("SELECT sku, name, price, stock_qty FROM products ORDER BY sku")
    return [ProductOut(**dict(r)) for r in rows]


async def _with_items(pool: asyncpg.Pool, query: str, *args: object) -> list[OrderOut]:
    async with pool.acquire() as conn:
        orders = await conn.fetch(query, *args)
        if not orders:
            return []
        lines: dict[UUID, list[OrderLineOut]] = defaultdict(list)
        for r in await conn.fetch(
            """
            SELECT order_id, sku, qty, unit_price FROM order_items
            WHERE order_id = ANY($1::uuid[]) ORDER BY order_id, sku
            """,
            [o["id"] for o in orders],
        ):
            lines[r["order_id"]].append(_line_out(r["sku"], r["qty"], r["unit_price"]))
    return [_order_out(o, lines[o["id"]]) for o in orders]


def _line_out(sku: str, qty: int, unit_price: Decimal) -> OrderLineOut:
    return OrderLineOut(sku=sku, qty=qty, unit_price=unit_price, line_total=unit_price * qty)


def _order_out(row: asyncpg.Record, items: list[OrderLineOut]) -> OrderOut:
    return OrderOut(
        id=row["id"],
        customer_id=row["customer_id"],
        email=row["email"],
        status=OrderStatus(row["status"]),
        items=items,
        total=row["total"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
