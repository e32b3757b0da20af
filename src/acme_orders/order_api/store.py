"""The API's SQL: placing an order with its outbox event, and reading orders and products."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from uuid import UUID

import asyncpg

from acme_orders.events import OrderLine, OrderPlaced
from acme_orders.order_api.schemas import OrderLineOut, OrderOut, PlaceOrder, ProductOut
from acme_orders.orders import OrderStatus
from acme_orders.outbox import add_to_outbox

ORDER_COLUMNS = "id, customer_id, email, status, total, created_at, updated_at"


class UnknownSkuError(Exception):
    def __init__(self, skus: Sequence[str]) -> None:
        super().__init__(f"unknown sku: {', '.join(skus)}")
        self.skus = skus


async def place_order(pool: asyncpg.Pool, request: PlaceOrder) -> OrderOut:
    """Store the order, its lines at today's prices, and its OrderPlaced event, atomically."""
    skus = [line.sku for line in request.items]
    async with pool.acquire() as conn, conn.transaction():
        prices: dict[str, Decimal] = {
            r["sku"]: r["price"]
            for r in await conn.fetch(
                "SELECT sku, price FROM products WHERE sku = ANY($1::text[])", skus
            )
        }
        unknown = [sku for sku in skus if sku not in prices]
        if unknown:
            raise UnknownSkuError(unknown)
        lines = [
            OrderLine(sku=line.sku, qty=line.qty, unit_price=prices[line.sku])
            for line in request.items
        ]
        total = sum((line.unit_price * line.qty for line in lines), Decimal("0.00"))
        order_id = uuid.uuid4()
        order = await conn.fetchrow(
            f"""
            INSERT INTO orders (id, customer_id, email, total) VALUES ($1, $2, $3, $4)
            RETURNING {ORDER_COLUMNS}
            """,
            order_id,
            request.customer_id,
            request.email,
            total,
        )
        await conn.execute(
            """
            INSERT INTO order_items (order_id, sku, qty, unit_price)
            SELECT $1, * FROM unnest($2::text[], $3::int[], $4::numeric[])
            """,
            order_id,
            skus,
            [line.qty for line in lines],
            [line.unit_price for line in lines],
        )
        await add_to_outbox(
            conn,
            [
                OrderPlaced(
                    order_id=order_id,
                    customer_id=request.customer_id,
                    email=request.email,
                    items=tuple(lines),
                    total=total,
                )
            ],
        )
    assert order is not None
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
