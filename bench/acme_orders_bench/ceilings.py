"""Ceilings, measured on the same machine right after the pipeline (so they do not compete with
it): how many orders a second the database alone could take doing the pipeline's SQL, and how
many messages a second the broker alone could carry. The pipeline's rate over each is how much of
that the system turns into finished orders."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import re
import shutil
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from acme_orders.core import consumer, orders, outbox
from acme_orders.core.events import (
    Event,
    InventoryReserved,
    OrderLine,
    OrderPlaced,
    PaymentCompleted,
)
from acme_orders.core.settings import Settings
from acme_orders.inventory import stock
from acme_orders.notification import email as email_module
from acme_orders.order_api import store
from acme_orders.payment import charge
from acme_orders_bench import broker_load
from acme_orders_bench.keys import unix_ms, uuid7_sql

logger = logging.getLogger(__name__)

PGBENCH_CLIENTS = 8
PGBENCH_THREADS = 2
# On the happy path an order is 3 messages published (OrderPlaced, InventoryReserved,
# PaymentCompleted) and the same 3 consumed.
MESSAGES_PER_ORDER = 3


class CeilingError(RuntimeError):
    pass


def _payload(event: Event) -> str:
    """The event's JSON as a SQL expression. In base64, because pgbench takes any ":word" in a
    script (here: a time of day, "qty":1) for one of its variables."""
    encoded = base64.b64encode(event.model_dump_json().encode()).decode()
    return f"convert_from(decode('{encoded}', 'base64'), 'UTF8')::jsonb"


def _sample_events() -> tuple[OrderPlaced, InventoryReserved, PaymentCompleted]:
    order_id = uuid.uuid4()
    items = (
        OrderLine(sku="HOODIE-NVY-L", qty=2, unit_price=Decimal("49.00")),
        OrderLine(sku="TSHIRT-BLK-M", qty=1, unit_price=Decimal("19.90")),
    )
    who = {"order_id": order_id, "customer_id": "B12345", "email": "b12345@example.com"}
    total = Decimal("117.90")
    now = datetime.now(UTC)
    return (
        OrderPlaced(**who, items=items, total=total, occurred_at=now),
        InventoryReserved(**who, items=items, total=total, occurred_at=now),
        PaymentCompleted(**who, amount=total, payment_id=uuid.uuid4(), occurred_at=now),
    )


def bound(statement: str, *values: str) -> str:
    """A statement of the pipeline with its parameters $1, $2, ... replaced by these pgbench
    expressions, so that pgbench runs the very statement the service does."""
    replaced = re.sub(r"\$(\d+)", lambda match: f"({values[int(match.group(1)) - 1]})", statement)
    return replaced.strip() + ";"


def _order_uuid(kind: str, order: str) -> str:
    """The UUID of one of the batch's orders (or of one of its events: `kind`), `order` being a
    SQL expression of its number in the batch, 1 to B: a UUIDv7 of the moment the batch was
    placed (:placed_ms), as the system's ids are time-ordered, its other bits from pgbench's
    random :seed, the same wherever a statement names it (pgbench has no uuid variables). CAST:
    pgbench passes its variables as parameters of unknown type (--protocol=prepared)."""
    return uuid7_sql(
        "CAST(:placed_ms AS bigint)", f"CAST(:seed AS text) || '-{kind}-' || ({order})"
    )


def _per_order(expression: str, batch: int, per_line: str | None = None) -> str:
    """An array of `expression` (of k, the order's number in the batch) for each order of the
    batch, in order; with `per_line` (the number of lines), once per line j of each order."""
    if per_line is None:
        return f"ARRAY(SELECT {expression} FROM generate_series(1, {batch}) AS k ORDER BY k)"
    return (
        f"ARRAY(SELECT {expression} FROM generate_series(1, {batch}) AS k, "
        f"generate_series(1, {per_line}) AS j ORDER BY k, j)"
    )


def pgbench_script(skus: list[str], batch: int = 1, claim_limit: int = 500) -> str:
    """One pgbench transaction = a batch of `batch` orders through the pipeline, statement for
    statement: the services' own statements (order_api.store.PLACE_ORDERS,
    core.consumer.RECORD_PROCESSED, core.orders, inventory.stock, payment.charge,
    notification.email, core.outbox) with their parameters bound to pgbench expressions. The API
    stores the batch's orders with one statement (and commit), as its group commit stores the
    orders that arrived together; each consumer handles the batch's events in one transaction, as
    a consumer handles what it received up to PREFETCH_COUNT; then the publisher claims up to
    `claim_limit` (OUTBOX_BATCH_SIZE) NEW rows and marks them SENT. No messaging, no Python: only
    the database's cost. `batch` 1 is the pipeline at low rates, where
    every batch holds one event; PREFETCH_COUNT is the pipeline flat out.

    The orders of a batch take the same 1 to 3 consecutive SKUs of the sorted catalogue (a slice
    of an array, since pgbench variables are numbers), all with the same qty of 1 to 3."""
    if batch < 1:
        raise ValueError("a batch holds at least one order")
    catalogue = sorted(skus)
    n = len(catalogue)
    quoted = ", ".join("'" + sku.replace("'", "''") + "'" for sku in catalogue)
    # A space after each ":" of the slice: pgbench would read ":CAST" as a variable.
    lines = f"(ARRAY[{quoted}]::text[])[CAST(:lo AS int) : CAST(:hi AS int)]"
    line_count = "(CAST(:hi AS int) - CAST(:lo AS int) + 1)"
    placed, reserved, paid = _sample_events()
    email = "'b' || :cust || '@example.com'"
    orders_of_batch = _per_order(_order_uuid("order", "k"), batch)
    ids: dict[Event, str] = {
        event: _per_order(_order_uuid(kind, "k"), batch)
        for event, kind in ((placed, "placed"), (reserved, "reserved"), (paid, "paid"))
    }

    def each(value: str) -> str:
        """The same value for every order of the batch."""
        return f"array_fill({value}, ARRAY[{batch}])"

    def emit(event: Event) -> str:
        return bound(
            outbox.INSERT_EVENTS,
            ids[event],
            each(f"CAST('{event.event_type}' AS text)"),
            each(f"CAST('{event.routing_key}' AS text)"),
            orders_of_batch,
            each(_payload(event)),
            each("NULL::jsonb"),
        )

    def handling(service: str, event: Event) -> str:
        """The start of a consumer's transaction: its guard, then the orders' row locks."""
        return "\n".join(
            (
                "BEGIN;",
                bound(consumer.RECORD_PROCESSED, f"'{service}'", ids[event], "0"),
                bound(orders.LOCK_ORDERS, orders_of_batch),
            )
        )

    per_line = functools.partial(_per_order, batch=batch, per_line=line_count)
    place_orders = bound(
        store.PLACE_ORDERS,
        orders_of_batch,
        each("CAST('B' || :cust AS text)"),
        each(f"CAST({email} AS text)"),
        each("117.90::numeric"),
        each("NULL::bigint"),
        each("NULL::text"),
        each("NULL::text"),
        ids[placed],
        each(f"CAST('{placed.event_type}' AS text)"),
        each(f"CAST('{placed.routing_key}' AS text)"),
        each(_payload(placed)),
        each("NULL::jsonb"),
        per_line(_order_uuid("order", "k")),
        per_line(f"({lines})[j]"),
        per_line("CAST(:qty AS int)"),
        per_line(f"(SELECT price FROM products WHERE sku = ({lines})[j])"),
    )
    record_reservations = bound(
        stock.RECORD_RESERVATIONS,
        lines,
        f"array_fill(CAST(:qty AS int) * {batch}, ARRAY[{line_count}])",
        _per_order(_order_uuid("order", "k"), batch, line_count),
        _per_order(f"({lines})[j]", batch, line_count),
        _per_order("CAST(:qty AS int)", batch, line_count),
        orders_of_batch,
        each("CAST('reserved' AS text)"),
    )
    set_paid = bound(orders.SET_STATUSES, orders_of_batch, each("CAST('paid' AS text)"))
    record_payment = bound(
        charge.RECORD_PAYMENTS,
        orders_of_batch,
        _per_order(f"'order-' || {_order_uuid('order', 'k')} || '-charge'", batch),
        "'simulated'",
        _per_order(f"'sim_' || {_order_uuid('paid', 'k')}", batch),
        each("CAST('completed' AS text)"),
        each("117.90::numeric"),
        ids[paid],
        each("NULL::text"),
    )
    notify = bound(
        email_module.RECORD_NOTIFICATIONS,
        orders_of_batch,
        each("CAST('order_paid' AS text)"),
        each(f"CAST({email} AS text)"),
        _per_order(f"'Your Acme order ' || {_order_uuid('order', 'k')} || ' is paid'", batch),
        each("CAST('We received your payment of 117.90. We are packing it now.' AS text)"),
    )
    return f"""\
\\set lo random(1, {n})
\\set hi least(:lo + random(0, 2), {n})
\\set qty random(1, 3)
\\set cust random(1, 100000)
\\set seed random(1, 9223372036854775806)
-- the moment the batch is placed, the time of its ids: pgbench has no clock of its own
SELECT {unix_ms("clock_timestamp()")} AS placed_ms \\gset
-- API: the orders, their lines at current prices, their OrderPlaced, in one statement and commit
{place_orders}
-- inventory: reserve every line of the batch's orders, their InventoryReserved
{handling("inventory", placed)}
{bound(stock.LOCK_PRODUCTS, lines)}
{record_reservations}
{emit(reserved)}
END;
-- payment: paid, PaymentCompleted
{handling("payment", reserved)}
{set_paid}
{record_payment}
{emit(paid)}
END;
-- notification: the e-mails
{handling("notification", paid)}
{notify}
END;
-- publisher: claim NEW rows (SKIP LOCKED, oldest first) and mark them SENT, up to
-- OUTBOX_BATCH_SIZE at a time as the publisher does
BEGIN;
{bound(outbox.CLAIM_FOR_PUBLISHING, str(claim_limit))}
END;
"""


async def database_ceiling(
    database_url: str, skus: list[str], seconds: int, batch: int = 1, claim_limit: int = 500
) -> dict[str, Any]:
    """pgbench running pgbench_script: orders/s the database sustains with no messaging, in
    batches of `batch` orders (a pgbench transaction is a batch)."""
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        raise CeilingError(
            "pgbench is not installed; install it: apt-get install postgresql-client"
        )
    with tempfile.TemporaryDirectory(prefix="acme-bench-") as folder:
        script = Path(folder) / "order.sql"
        script.write_text(pgbench_script(skus, batch, claim_limit), encoding="utf-8")
        command = [
            pgbench,
            "--no-vacuum",
            "--protocol=prepared",
            f"--client={PGBENCH_CLIENTS}",
            f"--jobs={PGBENCH_THREADS}",
            f"--time={seconds}",
            f"--file={script}",
            database_url,
        ]
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        stdout, stderr = await process.communicate()
    text = stdout.decode(errors="replace")
    tps = re.search(r"^tps = ([\d.]+)", text, re.M)
    done = re.search(r"^number of transactions actually processed: (\d+)", text, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", text, re.M)
    latency = re.search(r"^latency average = ([\d.]+) ms", text, re.M)
    if process.returncode != 0 or tps is None or done is None:
        raise CeilingError(
            f"pgbench failed (exit code {process.returncode}):\n{text}"
            f"{stderr.decode(errors='replace')}"
        )
    return {
        "orders_per_second": round(float(tps.group(1)) * batch, 1),
        "orders": int(done.group(1)) * batch,
        "batch": batch,
        "outbox_claim_limit": claim_limit,
        "failed_batches": int(failed.group(1)) if failed else 0,
        "latency_ms_per_batch": float(latency.group(1)) if latency else None,
        "clients": PGBENCH_CLIENTS,
        "threads": PGBENCH_THREADS,
        "seconds": seconds,
        "command": "pgbench --no-vacuum --protocol=prepared "
        f"--client={PGBENCH_CLIENTS} --jobs={PGBENCH_THREADS} --time={seconds} --file=order.sql",
    }


async def _start_side(args: list[str]) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        broker_load.__name__,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    if line.strip() != b"ready":
        _, err = await process.communicate()
        raise CeilingError(f"broker load {args[0]} did not start: {err.decode(errors='replace')}")
    return process


async def _result(process: asyncio.subprocess.Process, side: str) -> dict[str, Any]:
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise CeilingError(f"broker load {side} failed: {stderr.decode(errors='replace')}")
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


async def broker_ceiling(settings: Settings, seconds: int) -> dict[str, Any]:
    """A publishing process and a consuming process at once, on the vhost of `settings`: the
    messages a second RabbitMQ carries with confirms, persistence and acks, and no database."""
    url = settings.rabbitmq_url
    publisher = await _start_side(["publish", url, str(seconds)])
    try:
        consumer = await _start_side(["consume", url, str(seconds), str(settings.prefetch_count)])
    except BaseException:
        publisher.kill()
        await publisher.wait()
        raise
    for side in (publisher, consumer):
        assert side.stdin is not None
        side.stdin.write(b"go\n")
        await side.stdin.drain()
    published = await _result(publisher, "publish")
    consumed = await _result(consumer, "consume")
    publish_rate = published["messages"] / published["seconds"]
    consume_rate = consumed["messages"] / consumed["seconds"]
    messages = min(publish_rate, consume_rate)
    return {
        "published_per_second": round(publish_rate, 1),
        "consumed_per_second": round(consume_rate, 1),
        "messages_per_second": round(messages, 1),
        "orders_per_second": round(messages / MESSAGES_PER_ORDER, 1),
        "message_bytes": published["body_bytes"],
        "publishes_in_flight": broker_load.IN_FLIGHT,
        "prefetch": settings.prefetch_count,
        "seconds": seconds,
    }
