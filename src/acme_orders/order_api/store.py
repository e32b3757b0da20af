"""The API's SQL: placing an order with its outbox event, and reading orders and products."""

from __future__ import annotations

import asyncio
import enum
import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from acme_orders.core.cancellation import cancel_orders
from acme_orders.core.database import Connection, is_transient
from acme_orders.core.events import OrderLine, OrderPlaced
from acme_orders.core.ids import new_id
from acme_orders.core.observability import tracing
from acme_orders.core.observability.metrics import API_ORDERS_PER_INSERT
from acme_orders.core.orders import CANCELLABLE_STATUSES, CancelReason, OrderStatus
from acme_orders.core.outbox import EVENT_COLUMNS
from acme_orders.order_api.group_commit import GroupCommit
from acme_orders.order_api.paging import Position
from acme_orders.order_api.schemas import OrderLineOut, OrderOut, PlaceOrder, ProductOut

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


class PricesChangedError(Exception):
    """A price changed between reading it and storing the order, again and again: nothing was
    stored, and the client may simply try again."""


class _KeyTakenMeanwhileError(Exception):
    """Another request with the same Idempotency-Key committed while this one ran."""


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    order: OrderOut
    # True when an earlier request with the same Idempotency-Key created the order.
    replayed: bool


class PriceBook:
    """The catalogue's prices as this process last read them. An order takes its prices from here
    and the statement that stores it checks them against the products table: no order is stored
    at a price that is not today's, and an order of known products needs no lookup first."""

    def __init__(self) -> None:
        # Only SKUs found in products are kept, so this is never larger than the catalogue.
        self._prices: dict[str, Decimal] = {}

    async def prices(
        self, pool: asyncpg.Pool, skus: Sequence[str], *, reload: bool = False
    ) -> dict[str, Decimal]:
        """The price of each SKU that exists, read again from the database when asked to or when
        not known yet."""
        wanted = list(skus) if reload else [sku for sku in skus if sku not in self._prices]
        if wanted:
            rows = await pool.fetch(
                "SELECT sku, price FROM products WHERE sku = ANY($1::text[])", wanted
            )
            found = {row["sku"]: row["price"] for row in rows}
            for sku in wanted:
                if sku in found:
                    self._prices[sku] = found[sku]
                else:
                    self._prices.pop(sku, None)
        return {sku: self._prices[sku] for sku in skus if sku in self._prices}


# An insert of orders normally takes milliseconds; one that has run this long waits for something
# (a lock on a product row, another replica's claim of the same Idempotency-Key), and the orders
# after it go into an insert beside it instead of waiting behind it.
INSERT_STALLED_AFTER = 0.1


class OrderWriter:
    """Stores orders with group commit (see group_commit): the orders that arrive while one insert
    runs go into the next statement together. `max_batch` orders at most in a statement, at most
    `in_flight` statements at once that have not stalled (`stalled_after` seconds), and at most
    `most_in_flight` in all; `max_batch` 1 stores each order with a statement of its own."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int,
        in_flight: int,
        most_in_flight: int,
        stalled_after: float = INSERT_STALLED_AFTER,
    ) -> None:
        self.pool = pool
        self._group: GroupCommit[_PreparedOrder, _Stored] = GroupCommit(
            self._insert,
            max_batch=max_batch,
            in_flight=in_flight,
            # An error that is not an outage may be one order's (a value the schema refuses):
            # the others are stored without it.
            alone_after=lambda error: not is_transient(error),
            stalled_after=stalled_after,
            most_in_flight=most_in_flight,
        )

    async def insert(self, order: _PreparedOrder) -> _Stored:
        return await self._group.submit(order)

    @property
    def waiting(self) -> int:
        """Orders ready to store that wait for the insert under way to end."""
        return self._group.waiting

    async def close(self) -> None:
        await self._group.close()

    async def _insert(self, orders: Sequence[_PreparedOrder]) -> list[_Stored]:
        rows = await self.pool.fetch(PLACE_ORDERS, *_place_orders_arguments(orders))
        API_ORDERS_PER_INSERT.observe(len(orders))
        return _stored_outcomes(orders, rows)


async def place_order(
    writer: OrderWriter,
    price_book: PriceBook,
    request: PlaceOrder,
    idempotency_key: str | None = None,
    owner: int | None = None,
    correlation_id: str | None = None,
) -> PlacedOrder:
    """Store the order, its lines at today's prices, and its OrderPlaced event, atomically; the
    order belongs to the API key `owner` (None: placed without a key). The event carries
    `correlation_id` (the request's id), and every later event of the order carries it on.

    With an Idempotency-Key, a retry of the same request returns the order the first one made,
    and a different request with the same key is refused."""
    request_hash = ""
    if idempotency_key is not None and owner is not None:
        # Each API key has Idempotency-Keys of its own: another client choosing the same one must
        # neither get this client's order back nor learn that the key was used.
        idempotency_key = f"key {owner}: {idempotency_key}"
    if idempotency_key is not None:
        request_hash = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
        earlier = await _order_for_key(writer.pool, idempotency_key, request_hash)
        if earlier is not None:
            return PlacedOrder(earlier, replayed=True)
    placement = _Placement(request, idempotency_key, request_hash, owner, correlation_id)
    try:
        order = await _insert_order_retrying(writer, price_book, placement)
    except _KeyTakenMeanwhileError:
        assert idempotency_key is not None
        earlier = await _order_for_key(writer.pool, idempotency_key, request_hash)
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


@dataclass(frozen=True, slots=True)
class _Placement:
    """What one POST /orders asks to store, beyond its prices."""

    request: PlaceOrder
    idempotency_key: str | None
    request_hash: str
    owner: int | None
    correlation_id: str | None


@dataclass(frozen=True, slots=True)
class _PreparedOrder:
    """An order ready to store: its lines priced (sorted by SKU), its event built."""

    placement: _Placement
    lines: tuple[OrderLine, ...]
    event: OrderPlaced
    # The request's span, when tracing, taken in the request's own context (the insert runs in
    # another task): publishing the event continues its trace.
    trace_context: str | None


class _Refused(enum.Enum):
    """Why a statement did not store an order. Nothing of that order was stored."""

    PRICES_CHANGED = "a line's price is not the product's price now"
    KEY_TAKEN = "another request claimed the Idempotency-Key first"


_Stored = OrderOut | _Refused


async def _insert_order_retrying(
    writer: OrderWriter, price_book: PriceBook, placement: _Placement
) -> OrderOut:
    """The database may pick the insert as a deadlock or serialization victim, or a price may have
    changed since the price book read it; nothing was stored then, so it is simply run again (with
    prices read afresh)."""
    reload_prices = False
    for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
        try:
            prepared = await _prepare(writer.pool, price_book, placement, reload_prices)
            stored = await writer.insert(prepared)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == TRANSIENT_ATTEMPTS:
                raise
            await asyncio.sleep(0.01 * attempt)
            continue
        if stored is _Refused.KEY_TAKEN:
            raise _KeyTakenMeanwhileError
        if stored is not _Refused.PRICES_CHANGED:
            return stored
        if attempt == TRANSIENT_ATTEMPTS:
            raise PricesChangedError
        reload_prices = True
    raise AssertionError("unreachable")


async def _prepare(
    pool: asyncpg.Pool, price_book: PriceBook, placement: _Placement, reload_prices: bool
) -> _PreparedOrder:
    request = placement.request
    # Sorted, so that the foreign-key locks on products are taken in one order by everyone.
    lines_in = sorted(request.items, key=lambda line: line.sku)
    skus = [line.sku for line in lines_in]
    prices = await price_book.prices(pool, skus, reload=reload_prices)
    unknown = [sku for sku in skus if sku not in prices]
    if unknown:
        raise UnknownSkuError(unknown)
    lines = tuple(
        OrderLine(sku=line.sku, qty=line.qty, unit_price=prices[line.sku]) for line in lines_in
    )
    event = OrderPlaced(
        order_id=new_id(),
        customer_id=request.customer_id,
        email=request.email,
        items=lines,
        total=sum((line.unit_price * line.qty for line in lines), Decimal("0.00")),
        correlation_id=placement.correlation_id,
    )
    return _PreparedOrder(placement, lines, event, tracing.current_trace_context())


# One statement for a batch of orders (one array per column, one element per order; the lines
# flattened, each naming its order): one round trip and one commit for all of them, as PostgreSQL
# runs a statement as one transaction. Each order is stored with its lines, its OrderPlaced row in
# the outbox and its Idempotency-Key, or nothing of it is; whether one order is stored does not
# depend on the others. An order is stored only if every line's price ($16) is the product's price
# now, and, with a key ($6), only if this statement claimed the key: a concurrent request with the
# same key waits here until the first commits, then finds the key taken (as does the second of two
# orders with one key in the same batch). One row comes back per order, in the batch's order: were
# its prices current, and the order if it was stored. The outbox rows have the columns of every
# outbox insert (outbox.EVENT_COLUMNS); a trace context ($12) is NULL when not tracing.
PLACE_ORDERS = f"""
WITH placement AS (
    SELECT * FROM unnest(
        $1::uuid[], $2::text[], $3::text[], $4::numeric[], $5::bigint[], $6::text[], $7::text[],
        $8::uuid[], $9::text[], $10::text[], $11::jsonb[], $12::jsonb[]
    ) WITH ORDINALITY AS p (order_id, customer_id, email, total, api_key_id, key, request_hash,
                            event_id, event_type, routing_key, payload, trace_context, position)
), line AS (
    SELECT * FROM unnest($13::uuid[], $14::text[], $15::int[], $16::numeric[])
        AS l (order_id, sku, qty, unit_price)
), priced AS (
    SELECT line.order_id
    FROM line LEFT JOIN products AS p ON p.sku = line.sku AND p.price = line.unit_price
    GROUP BY line.order_id
    HAVING count(p.sku) = count(*)
), claimed_key AS (
    INSERT INTO idempotency_keys (key, request_hash, order_id)
    SELECT placement.key, placement.request_hash, placement.order_id
    FROM placement JOIN priced USING (order_id)
    WHERE placement.key IS NOT NULL
    ORDER BY placement.position
    ON CONFLICT (key) DO NOTHING
    RETURNING order_id
), go AS (
    SELECT placement.* FROM placement JOIN priced USING (order_id)
    WHERE placement.key IS NULL OR placement.order_id IN (SELECT order_id FROM claimed_key)
), new_order AS (
    INSERT INTO orders (id, customer_id, email, total, api_key_id)
    SELECT order_id, customer_id, email, total, api_key_id FROM go ORDER BY position
    RETURNING {ORDER_COLUMNS}
), new_lines AS (
    INSERT INTO order_items (order_id, sku, qty, unit_price)
    SELECT line.* FROM line WHERE line.order_id IN (SELECT order_id FROM go) ORDER BY line.sku
), new_event AS (
    INSERT INTO event_outbox ({EVENT_COLUMNS})
    SELECT event_id, event_type, routing_key, order_id, payload, trace_context
    FROM go ORDER BY position
)
SELECT placement.order_id IN (SELECT order_id FROM priced) AS prices_current, new_order.*
FROM placement LEFT JOIN new_order ON new_order.id = placement.order_id
ORDER BY placement.position
"""


def _place_orders_arguments(orders: Sequence[_PreparedOrder]) -> list[list[Any]]:
    """PLACE_ORDERS' parameters for these orders."""
    lines = [(order.event.order_id, line) for order in orders for line in order.lines]
    return [
        [order.event.order_id for order in orders],
        [order.placement.request.customer_id for order in orders],
        [order.placement.request.email for order in orders],
        [order.event.total for order in orders],
        [order.placement.owner for order in orders],
        [order.placement.idempotency_key for order in orders],
        [order.placement.request_hash for order in orders],
        [order.event.event_id for order in orders],
        [order.event.event_type for order in orders],
        [order.event.routing_key for order in orders],
        [order.event.model_dump_json() for order in orders],
        [order.trace_context for order in orders],
        [order_id for order_id, _ in lines],
        [line.sku for _, line in lines],
        [line.qty for _, line in lines],
        [line.unit_price for _, line in lines],
    ]


def _stored_outcomes(
    orders: Sequence[_PreparedOrder], rows: Sequence[asyncpg.Record]
) -> list[_Stored]:
    """What PLACE_ORDERS did with each order, from its one row per order."""
    if len(rows) != len(orders):
        raise AssertionError(f"{len(rows)} rows for {len(orders)} orders")
    outcomes: list[_Stored] = []
    for order, row in zip(orders, rows, strict=True):
        if not row["prices_current"]:
            outcomes.append(_Refused.PRICES_CHANGED)
        elif row["id"] is None:
            outcomes.append(_Refused.KEY_TAKEN)
        else:
            lines = [_line_out(line.sku, line.qty, line.unit_price) for line in order.lines]
            outcomes.append(_order_out(row, lines))
    return outcomes


async def get_order(
    pool: asyncpg.Pool, order_id: UUID, only_of: int | None = None
) -> OrderOut | None:
    """The order; with `only_of`, only if the API key of that id placed it."""
    async with pool.acquire() as conn:
        return await _read_order(conn, order_id, only_of)


GET_ORDER = f"""
SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 AND ($2::bigint IS NULL OR api_key_id = $2)
"""


async def _read_order(conn: Connection, order_id: UUID, only_of: int | None) -> OrderOut | None:
    orders = await _with_items(conn, await conn.fetch(GET_ORDER, order_id, only_of))
    return orders[0] if orders else None


class OrderIsFinalError(Exception):
    """The order ended another way before it could be cancelled."""

    def __init__(self, order_id: UUID, status: OrderStatus) -> None:
        super().__init__(
            f"order {order_id} is already {status.value}: only a pending or reserved order can "
            "be cancelled"
        )
        self.status = status


@dataclass(frozen=True, slots=True)
class CancelledOrder:
    order: OrderOut
    # True when the order was cancelled before this request, which changed nothing.
    earlier: bool


async def cancel_order(
    pool: asyncpg.Pool, order_id: UUID, only_of: int | None, correlation_id: str | None
) -> CancelledOrder | None:
    """Cancel the order (with `only_of`, only if that API key placed it) unless it is final, and
    return it, cancelled: now, or already before. None: no such order. Raises OrderIsFinalError
    for an order that ended another way, which stays as it is."""
    async with pool.acquire() as conn, conn.transaction():
        before = await cancel_orders(
            conn,
            [order_id],
            CancelReason.REQUESTED,
            only_of=only_of,
            correlation_id=correlation_id,
        )
        status = before.get(order_id)
        if status is None:
            return None
        if status not in CANCELLABLE_STATUSES and status is not OrderStatus.CANCELLED:
            raise OrderIsFinalError(order_id, status)
        order = await _read_order(conn, order_id, only_of)
    assert order is not None
    return CancelledOrder(order, earlier=status is OrderStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class OrderList:
    orders: list[OrderOut]
    # Where the next page starts; None: this is the last page.
    next_page_after: Position | None


# Newest first, from just after a position ($4, $5): a row comparison that the indexes on
# (..., created_at DESC, id DESC) answer with one range scan, however far down the list the page
# is (db/006_keyset_order_list.sql). The first page starts after paging.FIRST_PAGE, so that
# every page is this one statement, its position always an index condition.
LIST_ORDERS = f"""
SELECT {ORDER_COLUMNS} FROM orders
WHERE ($1::text IS NULL OR customer_id = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::bigint IS NULL OR api_key_id = $3)
  AND (created_at, id) < ($4::timestamptz, $5::uuid)
ORDER BY created_at DESC, id DESC
LIMIT $6
"""


async def list_orders(
    pool: asyncpg.Pool,
    *,
    customer_id: str | None,
    status: OrderStatus | None,
    limit: int,
    after: Position,
    only_of: int | None = None,
) -> OrderList:
    """Up to `limit` orders older than `after`, newest first; a filter left as None matches every
    order. `only_of`: the orders placed by the API key of that id."""
    async with pool.acquire() as conn:
        # One row more than the page: whether there is a next page, without asking for it.
        rows = await conn.fetch(
            LIST_ORDERS,
            customer_id,
            status.value if status else None,
            only_of,
            after.created_at,
            after.order_id,
            limit + 1,
        )
        page = rows[:limit]
        orders = await _with_items(conn, page)
    last = page[-1] if len(rows) > limit else None
    return OrderList(orders, Position(last["created_at"], last["id"]) if last else None)


async def list_products(pool: asyncpg.Pool) -> list[ProductOut]:
    rows = await pool.fetch("SELECT sku, name, price, stock_qty FROM products ORDER BY sku")
    return [ProductOut(**dict(r)) for r in rows]


async def _with_items(conn: Connection, orders: Sequence[asyncpg.Record]) -> list[OrderOut]:
    """The orders of these rows, with their lines."""
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
