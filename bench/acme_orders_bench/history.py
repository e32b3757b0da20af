"""`bench --history N`: the bench's fresh database prefilled with N finished orders, and the rows
they would have left behind, before the services start; so that a run can be compared with the
same run on an empty database, and housekeeping timed at that size.

The orders are spread evenly over the last --history-days, oldest first. Every 20th one ended
payment_failed (its stock released, a failed payment, a payment_failed e-mail), the others paid.
Each has its lines (1 to 3 SKUs, qty 1 to 3, at the catalogue's prices), its reservations, its
payment and its one notification, kept forever as the pipeline keeps them. The rows that
housekeeping deletes are kept as a system at steady state holds them right after a housekeeping
run: SENT event_outbox rows published within OUTBOX_RETENTION, processed_events within
PROCESSED_EVENTS_RETENTION, the Idempotency-Keys of every other order within
IDEMPOTENCY_KEY_RETENTION. So the publisher's own first purge (5 s after it starts) scans them
and deletes nothing, and `--purge` deletes what the next run would (see next_purge).

The stock: the paid orders of the history hold what they reserved, and the catalogue's stock_qty
is left as the bench sets it (system.BENCH_STOCK). The history is thus that of a catalogue that
started with BENCH_STOCK plus what the history's paid orders hold; each product's stock is its
starting stock minus what the paid orders hold, as the pipeline's invariants require, and the
load's orders never run out of stock.

All of it set-based: generate_series in batches of HISTORY_BATCH orders, one transaction each, then
VACUUM ANALYZE of every table filled (so that the run starts with the planner's statistics and
the visibility map of a database that lived, not of one bulk-loaded a second ago).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import asyncpg

from acme_orders.core.events import (
    Event,
    InventoryReleased,
    InventoryReserved,
    OrderPlaced,
    PaymentCompleted,
    PaymentFailed,
)
from acme_orders.core.settings import Settings
from acme_orders.core.topology import consumers_of
from acme_orders_bench.keys import unix_ms, uuid7_sql

HISTORY_BATCH = 100_000
# Every this-many-th order of the history ended payment_failed, the others paid.
PAYMENT_FAILED_EVERY = 20
CUSTOMERS = 100_000
# Each event of an order's life, for the orders that ended in this status, and its milliseconds
# after the order was placed: when it was written, published (+1 ms) and handled (+2 ms).
LIFE: tuple[tuple[str, type[Event], int], ...] = (
    ("paid", OrderPlaced, 0),
    ("paid", InventoryReserved, 5),
    ("paid", PaymentCompleted, 10),
    ("payment_failed", OrderPlaced, 0),
    ("payment_failed", InventoryReserved, 5),
    ("payment_failed", PaymentFailed, 10),
    ("payment_failed", InventoryReleased, 15),
)
# The tables the history fills, in the order of their foreign keys.
TABLES = (
    "orders",
    "order_items",
    "stock_reservations",
    "payments",
    "notifications",
    "event_outbox",
    "processed_events",
    "idempotency_keys",
)

# One batch's orders and lines, and the events of their lives, in temporary tables that each
# insert below reads. ON COMMIT DELETE ROWS: each batch's transaction starts with them empty.
CREATE_BATCH_TABLES = """
CREATE TEMPORARY TABLE history_orders (
    g bigint, id uuid, customer_id text, email text, status text, created_at timestamptz
) ON COMMIT DELETE ROWS;
CREATE TEMPORARY TABLE history_lines (
    order_id uuid, sku text, qty int, unit_price numeric(12, 2)
) ON COMMIT DELETE ROWS;
CREATE TEMPORARY TABLE history_totals (
    order_id uuid, total numeric(18, 2), items jsonb
) ON COMMIT DELETE ROWS;
CREATE TEMPORARY TABLE history_events (
    g bigint, order_id uuid, event_id uuid, event_type text, routing_key text, at timestamptz
) ON COMMIT DELETE ROWS;
"""
# Orders $1..$2 of $3, placed evenly over the $4 before now, the oldest first; every $5-th one
# ended payment_failed. Their ids are UUIDv7 of the moment each was placed, as the API's are.
FILL_ORDERS = f"""
INSERT INTO history_orders (g, id, customer_id, email, status, created_at)
SELECT g,
       {uuid7_sql(unix_ms("placed"), "'acme-history-order-' || g")},
       'H' || (g % {CUSTOMERS}),
       'h' || (g % {CUSTOMERS}) || '@example.com',
       CASE WHEN g % $5 = 0 THEN 'payment_failed' ELSE 'paid' END,
       placed
FROM generate_series($1::bigint, $2::bigint) AS g
CROSS JOIN LATERAL (SELECT now() - $4::interval * (($3 - g + 1)::float8 / $3) AS placed) AS t
"""
# 1 to 3 consecutive SKUs of the sorted catalogue (wrapping round), all of the same qty of 1 to 3.
FILL_LINES = """
INSERT INTO history_lines (order_id, sku, qty, unit_price)
SELECT o.id, p.sku, 1 + (o.g / 3) % 3, p.price
FROM history_orders AS o
CROSS JOIN LATERAL generate_series(0, (o.g / 7) % 3) AS k
JOIN (SELECT sku, price, row_number() OVER (ORDER BY sku) - 1 AS n, count(*) OVER () AS skus
      FROM products) AS p
  ON p.n = (o.g + k) % p.skus
"""
# Each order's total and its lines as the events carry them, once, for every insert below.
FILL_TOTALS = """
INSERT INTO history_totals (order_id, total, items)
SELECT order_id, sum(qty * unit_price),
       jsonb_agg(jsonb_build_object('sku', sku, 'qty', qty, 'unit_price', unit_price::text)
                 ORDER BY sku)
FROM history_lines
GROUP BY order_id
"""
# The temporary tables' statistics, so that the inserts join them by hash, not by a nested loop.
ANALYZE_BATCH_TABLES = "ANALYZE history_orders, history_lines, history_totals, history_events"
# $1..$4: LIFE as arrays (status, event_type, routing_key, ms after placing). Each event's id is
# a UUIDv7 of the moment it was written.
FILL_EVENTS = f"""
INSERT INTO history_events (g, order_id, event_id, event_type, routing_key, at)
SELECT o.g, o.id, {uuid7_sql(unix_ms("e.at"), "'acme-history-' || life.event_type || '-' || o.g")},
       life.event_type, life.routing_key, e.at
FROM history_orders AS o
JOIN unnest($1::text[], $2::text[], $3::text[], $4::int[])
    AS life (status, event_type, routing_key, ms) ON life.status = o.status
CROSS JOIN LATERAL (SELECT o.created_at + life.ms * interval '1 ms' AS at) AS e
"""
INSERT_ORDERS = """
INSERT INTO orders (id, customer_id, email, status, total, created_at, updated_at)
SELECT o.id, o.customer_id, o.email, o.status, t.total, o.created_at,
       o.created_at + interval '12 ms'
FROM history_orders AS o
JOIN history_totals AS t ON t.order_id = o.id
"""
INSERT_ITEMS = """
INSERT INTO order_items (order_id, sku, qty, unit_price)
SELECT order_id, sku, qty, unit_price FROM history_lines
"""
INSERT_RESERVATIONS = """
INSERT INTO stock_reservations (order_id, sku, qty, status, reserved_at, released_at)
SELECT l.order_id, l.sku, l.qty,
       CASE o.status WHEN 'paid' THEN 'reserved' ELSE 'released' END,
       o.created_at + interval '5 ms',
       CASE o.status WHEN 'paid' THEN NULL ELSE o.created_at + interval '15 ms' END
FROM history_lines AS l JOIN history_orders AS o ON o.id = l.order_id
"""
# As payment.charge records a charge of the simulated gateway, with the order's charge key.
INSERT_PAYMENTS = """
INSERT INTO payments
    (order_id, idempotency_key, gateway, gateway_reference, outcome, amount, payment_id, reason,
     created_at)
SELECT o.id, 'order-' || o.id || '-charge', 'simulated', 'sim_' || md5('pay-' || o.g),
       CASE o.status WHEN 'paid' THEN 'completed' ELSE 'failed' END, r.total,
       md5('acme-history-payment-' || o.g)::uuid,
       CASE o.status WHEN 'paid' THEN NULL ELSE 'card declined (simulated)' END,
       o.created_at + interval '10 ms'
FROM history_orders AS o JOIN history_totals AS r ON r.order_id = o.id
"""
INSERT_NOTIFICATIONS = """
INSERT INTO notifications (order_id, kind, recipient, subject, body, created_at)
SELECT o.id, CASE o.status WHEN 'paid' THEN 'order_paid' ELSE 'payment_failed' END, o.email,
       'Your Acme order ' || o.id || CASE o.status WHEN 'paid' THEN ' is paid'
                                                  ELSE ': payment failed' END,
       'We received your order of ' || r.total || '. Thank you for shopping at Acme.',
       o.created_at + interval '12 ms'
FROM history_orders AS o JOIN history_totals AS r ON r.order_id = o.id
"""
# The SENT rows published since $1 (now - OUTBOX_RETENTION - HOUSEKEEPING_INTERVAL), oldest
# first (ids rise with time, as the outbox's do), with a payload of an event's size and shape.
INSERT_OUTBOX = """
INSERT INTO event_outbox
    (event_id, event_type, routing_key, order_id, payload, status, created_at, published_at)
SELECT e.event_id, e.event_type, e.routing_key, e.order_id,
       jsonb_build_object(
           'event_id', e.event_id, 'event_type', e.event_type, 'occurred_at', e.at,
           'order_id', e.order_id, 'version', 1, 'correlation_id', NULL, 'causation_id', NULL,
           'customer_id', o.customer_id, 'email', o.email, 'total', t.total::text,
           'items', t.items),
       'SENT', e.at, e.at + interval '1 ms'
FROM history_events AS e
JOIN history_orders AS o ON o.g = e.g
JOIN history_totals AS t ON t.order_id = e.order_id
WHERE e.at + interval '1 ms' >= $1
ORDER BY e.at, e.event_id
"""
# Each consumer's record of each event it handled since $1; $2, $3: (event_type, service) pairs
# from the topology's bindings.
INSERT_PROCESSED = """
INSERT INTO processed_events (service, event_id, processed_at)
SELECT c.service, e.event_id, e.at + interval '2 ms'
FROM history_events AS e
JOIN unnest($2::text[], $3::text[]) AS c (event_type, service) ON c.event_type = e.event_type
WHERE e.at + interval '2 ms' >= $1
"""
# Every other order was placed with an Idempotency-Key; those since $1 are still remembered.
INSERT_IDEMPOTENCY_KEYS = """
INSERT INTO idempotency_keys (key, request_hash, order_id, created_at)
SELECT 'history-' || o.g, md5('request-' || o.g), o.id, o.created_at
FROM history_orders AS o
WHERE o.g % 2 = 0 AND o.created_at >= $1
"""
COUNT_ROWS = " UNION ALL ".join(f"SELECT '{t}' AS name, count(*) AS n FROM {t}" for t in TABLES)


def next_purge(settings: Settings) -> Settings:
    """The settings whose purge_all deletes, now, what the next housekeeping run of a steady
    system would: each retention shortened by HOUSEKEEPING_INTERVAL (down to zero), so that the
    oldest interval's worth of the rows the history kept goes."""
    interval = timedelta(seconds=settings.housekeeping_interval)

    def shortened(retention: timedelta) -> timedelta:
        return max(timedelta(0), retention - interval)

    # model_copy does not validate: a retention below its usual lower bound is the point here.
    return settings.model_copy(
        update={
            "outbox_retention": shortened(settings.outbox_retention),
            "processed_events_retention": shortened(settings.processed_events_retention),
            "idempotency_key_retention": shortened(settings.idempotency_key_retention),
        }
    )


def batches(orders: int, size: int = HISTORY_BATCH) -> list[tuple[int, int]]:
    """The first and last order (1-based, inclusive) of each batch."""
    if orders < 1 or size < 1:
        raise ValueError("a history needs at least one order, in batches of at least one")
    return [(lo, min(lo + size - 1, orders)) for lo in range(1, orders + 1, size)]


def life_arrays() -> tuple[list[str], list[str], list[str], list[int]]:
    """LIFE, one array per column, for FILL_EVENTS."""
    return (
        [status for status, _, _ in LIFE],
        [event.model_fields["event_type"].default for _, event, _ in LIFE],
        [event.routing_key for _, event, _ in LIFE],
        [ms for _, _, ms in LIFE],
    )


def handled_by() -> tuple[list[str], list[str]]:
    """(event_type, service) for every consumer of every event of LIFE, as the queues' bindings
    route them: the processed_events rows the history leaves."""
    pairs = dict.fromkeys(
        (event.model_fields["event_type"].default, service)
        for _, event, _ in LIFE
        for service in consumers_of(event.routing_key)
    )
    return [t for t, _ in pairs], [s for _, s in pairs]


async def prefill(
    database_url: str,
    settings: Settings,
    orders: int,
    days: float,
    say: Callable[[str], None],
    batch_size: int = HISTORY_BATCH,
) -> dict[str, Any]:
    """Fill the database with `orders` finished orders over the last `days`; what was written."""
    started = time.monotonic()
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await conn.execute(CREATE_BATCH_TABLES)
        # What a steady system holds right after a housekeeping run.
        now = await conn.fetchval("SELECT now()")
        outbox_since = now - settings.outbox_retention
        processed_since = now - settings.processed_events_retention
        keys_since = now - settings.idempotency_key_retention
        life, handlers = life_arrays(), handled_by()
        span = timedelta(days=days)
        plan = batches(orders, batch_size)
        for number, (lo, hi) in enumerate(plan, 1):
            async with conn.transaction():
                await conn.execute(FILL_ORDERS, lo, hi, orders, span, PAYMENT_FAILED_EVERY)
                await conn.execute(FILL_LINES)
                await conn.execute(FILL_TOTALS)
                await conn.execute(FILL_EVENTS, *life)
                await conn.execute(ANALYZE_BATCH_TABLES)
                for statement in (
                    INSERT_ORDERS,
                    INSERT_ITEMS,
                    INSERT_RESERVATIONS,
                    INSERT_PAYMENTS,
                    INSERT_NOTIFICATIONS,
                ):
                    await conn.execute(statement)
                await conn.execute(INSERT_OUTBOX, outbox_since)
                await conn.execute(INSERT_PROCESSED, processed_since, *handlers)
                await conn.execute(INSERT_IDEMPOTENCY_KEYS, keys_since)
            if number == len(plan) or number % 5 == 0:
                elapsed = time.monotonic() - started
                say(
                    f"history: {hi:,} of {orders:,} orders written "
                    f"({hi / elapsed:,.0f} orders/s, batch {number} of {len(plan)})"
                )
        say("history: VACUUM ANALYZE")
        for table in TABLES:
            await conn.execute(f"VACUUM (ANALYZE) {table}")
        rows = {r["name"]: r["n"] for r in await conn.fetch(COUNT_ROWS)}
    finally:
        await conn.close()
    return {
        "orders": orders,
        "days": days,
        "payment_failed_every": PAYMENT_FAILED_EVERY,
        "seconds": round(time.monotonic() - started, 1),
        "rows": rows,
        "kept_since": {
            "event_outbox": outbox_since.isoformat(),
            "processed_events": processed_since.isoformat(),
            "idempotency_keys": keys_since.isoformat(),
        },
    }
