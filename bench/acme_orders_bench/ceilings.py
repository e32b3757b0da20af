"""Ceilings, measured on the same machine right after the pipeline (so they do not compete with
it): how many orders a second the database alone could take doing the pipeline's SQL, and how
many messages a second the broker alone could carry. The pipeline's rate over each is how much of
that the system turns into finished orders."""

from __future__ import annotations

import asyncio
import base64
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


def _uuid(variable: str) -> str:
    """A UUID from two of pgbench's random numbers (pgbench has no uuid variables), the same
    wherever the statement names it: `:<variable>_hi`, `:<variable>_lo`. CAST: pgbench passes its
    variables as parameters of unknown type (--protocol=prepared)."""
    return (
        f"CAST(lpad(to_hex(CAST(:{variable}_hi AS bigint)), 16, '0')"
        f" || lpad(to_hex(CAST(:{variable}_lo AS bigint)), 16, '0') AS uuid)"
    )


def pgbench_script(skus: list[str]) -> str:
    """One pgbench transaction = one order through the pipeline, statement for statement: the
    services' own statements (order_api.store.PLACE_ORDER, core.consumer.RECORD_PROCESSED,
    core.orders, inventory.stock, payment.charge, notification.email, core.outbox), with their
    parameters bound to pgbench expressions, each service's committed on its own as the services
    do with batches of one event, then the events claimed and marked SENT as the publisher does.
    No messaging, no Python: only the database's cost.

    An order takes 1 to 3 consecutive SKUs of the sorted catalogue (a slice of an array, since
    pgbench variables are numbers), all with the same qty of 1 to 3."""
    catalogue = sorted(skus)
    n = len(catalogue)
    quoted = ", ".join("'" + sku.replace("'", "''") + "'" for sku in catalogue)
    # A space after each ":" of the slice: pgbench would read ":CAST" as a variable.
    lines = f"(ARRAY[{quoted}]::text[])[CAST(:lo AS int) : CAST(:hi AS int)]"
    line_count = "CAST(:hi AS int) - CAST(:lo AS int) + 1"
    qtys = f"array_fill(CAST(:qty AS int), ARRAY[{line_count}])"
    placed, reserved, paid = _sample_events()
    order, email = _uuid("order"), "'b' || :cust || '@example.com'"
    ids: dict[Event, str] = {
        placed: _uuid("placed"),
        reserved: _uuid("reserved"),
        paid: _uuid("paid"),
    }

    def emit(event: Event) -> str:
        return bound(
            outbox.INSERT_EVENTS,
            f"ARRAY[{ids[event]}]",
            f"ARRAY['{event.event_type}']",
            f"ARRAY['{event.routing_key}']",
            f"ARRAY[{order}]",
            f"ARRAY[{_payload(event)}]",
            "ARRAY[NULL::jsonb]",
        )

    def handling(service: str, event: Event) -> str:
        """The start of a consumer's transaction: its guard, then the order's row lock."""
        return "\n".join(
            (
                "BEGIN;",
                bound(consumer.RECORD_PROCESSED, f"'{service}'", f"ARRAY[{ids[event]}]", "0"),
                bound(orders.LOCK_ORDERS, f"ARRAY[{order}]"),
            )
        )

    randoms = "\n".join(
        f"\\set {name}_{half} random(1, 9223372036854775806)"
        for name in ("order", "placed", "reserved", "paid")
        for half in ("hi", "lo")
    )
    place_order = bound(
        store.PLACE_ORDER,
        order,
        "'B' || :cust",
        email,
        "117.90",
        lines,
        qtys,
        f"(SELECT array_agg(price ORDER BY sku) FROM products WHERE sku = ANY({lines}))",
        ids[placed],
        f"'{placed.event_type}'",
        f"'{placed.routing_key}'",
        _payload(placed),
        "NULL::text",
        "NULL::text",
        "NULL::bigint",
        "NULL::jsonb",
    )
    record_reservations = bound(
        stock.RECORD_RESERVATIONS,
        lines,
        qtys,
        f"array_fill({order}, ARRAY[{line_count}])",
        lines,
        qtys,
        f"ARRAY[{order}]",
        "ARRAY['reserved']",
    )
    set_paid = bound(orders.SET_STATUSES, f"ARRAY[{order}]", "ARRAY['paid']")
    record_payment = bound(
        charge.RECORD_PAYMENTS,
        f"ARRAY[{order}]",
        f"ARRAY['order-' || {order} || '-charge']",
        "'simulated'",
        f"ARRAY['sim_' || {ids[paid]}]",
        "ARRAY['completed']",
        "ARRAY[117.90]",
        f"ARRAY[{ids[paid]}]",
        "ARRAY[NULL::text]",
    )
    notify = bound(
        email_module.RECORD_NOTIFICATIONS,
        f"ARRAY[{order}]",
        "ARRAY['order_paid']",
        f"ARRAY[{email}]",
        "ARRAY['Your Acme order ' || :order_hi || ' is paid']",
        "ARRAY['We received your payment of 117.90. We are packing it now.']",
    )
    return f"""\
\\set lo random(1, {n})
\\set hi least(:lo + random(0, 2), {n})
\\set qty random(1, 3)
\\set cust random(1, 100000)
{randoms}
-- API: the order, its lines at current prices, OrderPlaced, in one statement
{place_order}
-- inventory: reserve every line, InventoryReserved
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
-- notification: the e-mail
{handling("notification", paid)}
{notify}
END;
-- publisher: claim NEW rows (SKIP LOCKED, oldest first) and mark them SENT; with every client
-- doing this once per order, a claim holds about the 3 rows of one order
BEGIN;
{bound(outbox.CLAIM_FOR_PUBLISHING, "500")}
END;
"""


async def database_ceiling(database_url: str, skus: list[str], seconds: int) -> dict[str, Any]:
    """pgbench running pgbench_script: orders/s the database sustains with no messaging."""
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        raise CeilingError(
            "pgbench is not installed; install it: apt-get install postgresql-client"
        )
    with tempfile.TemporaryDirectory(prefix="acme-bench-") as folder:
        script = Path(folder) / "order.sql"
        script.write_text(pgbench_script(skus), encoding="utf-8")
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
        "orders_per_second": round(float(tps.group(1)), 1),
        "orders": int(done.group(1)),
        "failed": int(failed.group(1)) if failed else 0,
        "latency_ms_per_order": float(latency.group(1)) if latency else None,
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
