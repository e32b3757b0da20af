"""`acme-orders bench --drain N`: how fast the publisher alone relays a backlog.

On a fresh database and vhost, N NEW outbox rows are inserted in one statement before the
publisher starts (so it meets the whole backlog at once, as after an outage), with a routing key
that only the bench's own quorum queue is bound to: the messages are routed and stored by the
broker exactly as in the pipeline, and no consumer competes for the CPU. Then only the publisher
is started, and the rates are taken from the rows' published_at (the database's clock).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg

from acme_orders.core.events import OrderLine, OrderPlaced
from acme_orders.core.messaging import declare_topology
from acme_orders.core.settings import Settings
from acme_orders.core.topology import QueueSpec
from acme_orders.publisher.service import SERVICE
from acme_orders_bench import measure, progress, system

# Bound to a routing key no service publishes or consumes: what lands there is the backlog only.
QUEUE = QueueSpec("bench.drain", ("bench.drain",))
POLL_INTERVAL = 0.5


def deadline_for(events: int) -> float:
    """Seconds to wait for the drain: a minute, or one second per 1,000 events (a tenth of the
    target rate) for a large backlog, so that a slow publisher ends with an error, not a hang."""
    return max(60.0, events / 1000)


def sample_payloads() -> list[str]:
    """Real OrderPlaced bodies with 1, 2 and 3 lines (an order of the bench's load has 1 to 3),
    so the rows weigh what the pipeline's do."""
    lines = [
        OrderLine(sku="HOODIE-NVY-L", qty=2, unit_price=Decimal("49.00")),
        OrderLine(sku="TSHIRT-BLK-M", qty=1, unit_price=Decimal("19.90")),
        OrderLine(sku="MUG-WHT-STD", qty=3, unit_price=Decimal("12.50")),
    ]
    payloads = []
    for count in (1, 2, 3):
        items = tuple(lines[:count])
        event = OrderPlaced(
            order_id=uuid.uuid4(),
            occurred_at=datetime.now(UTC),
            customer_id="B12345",
            email="b12345@example.com",
            items=items,
            total=sum((line.unit_price * line.qty for line in items), Decimal("0.00")),
        )
        payloads.append(event.model_dump_json())
    return payloads


async def insert_backlog(pool: asyncpg.Pool, events: int) -> None:
    """N NEW rows in one statement. Each row gets its own event_id and order_id, in the columns
    and in the payload (jsonb || keeps the size); the payloads take turns between 1, 2 and 3
    lines. The volatile gen_random_uuid() sits in a subquery the planner does not flatten, so
    it is called for every row."""
    await pool.execute(
        """
        INSERT INTO event_outbox (event_id, event_type, routing_key, order_id, payload)
        SELECT r.event_id, $1, $2, r.order_id,
               ($3::jsonb[])[1 + r.g % cardinality($3::jsonb[])]
                 || jsonb_build_object('event_id', r.event_id, 'order_id', r.order_id)
        FROM (SELECT g, gen_random_uuid() AS event_id, gen_random_uuid() AS order_id
              FROM generate_series(1, $4::int) AS g) AS r
        """,
        OrderPlaced.model_fields["event_type"].default,
        QUEUE.routing_keys[0],
        sample_payloads(),
        events,
    )


async def queue_depth(settings: Settings) -> int:
    """Messages ready in the drain queue, from a passive declare (nothing is created)."""
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(QUEUE.name, passive=True)
        count = queue.declaration_result.message_count
        return int(count) if count is not None else 0


async def new_rows(pool: asyncpg.Pool) -> int:
    # The outbox's partial index on NEW rows keeps this cheap while the backlog shrinks.
    count: int = await pool.fetchval("SELECT count(*) FROM event_outbox WHERE status = 'NEW'")
    return count


async def measure_drain(
    events: int,
    scratch: system.Scratch,
    log_dir: Path,
    say: Callable[[str], None],
    reporter: progress.Reporter | None = None,
) -> tuple[dict[str, Any], system.Services]:
    """Insert the backlog, start the publisher, wait until it is drained. Returns the results
    and the running publisher, for the caller to stop (this stops it itself if it raises)."""
    settings = scratch.settings
    await declare_topology(settings, [QUEUE])
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2, timeout=10)
    assert pool is not None
    services: system.Services | None = None
    try:
        say(f"inserting {events:,} NEW outbox rows (routing key {QUEUE.routing_keys[0]})")
        inserted = time.monotonic()
        await insert_backlog(pool, events)
        insert_seconds = time.monotonic() - inserted
        environ = system.service_environment(settings, system.free_port(), 1.0)
        # The publisher's pid is added once it exists: a process that started after begin()
        # counts from zero, so its start-up is in its CPU, as it is in the wall time.
        meter = measure.CpuMeter(
            pids={"publisher": [], "bench": [os.getpid()]},
            names=dict(measure.SERVER_PROCESS_NAMES),
        )
        say("starting the publisher alone")
        meter.begin()
        started_at = await measure.db_now(pool)
        started = time.monotonic()
        services = await system.start_services((SERVICE,), environ, log_dir)
        ready_seconds = time.monotonic() - started
        pids = services.pids
        meter.pids["publisher"] = [pids[SERVICE]]
        rss_start = measure.rss_mib(pids)
        series: list[dict[str, Any]] = []
        give_up = started + deadline_for(events)
        while True:
            services.check_running()
            backlog = await new_rows(pool)
            series.append(
                {
                    "at": round(time.monotonic() - started, 1),
                    "backlog": backlog,
                    "rss_mib": measure.rss_mib(pids),
                }
            )
            if backlog == 0 or time.monotonic() > give_up:
                break
            at = time.monotonic() - started
            if reporter is not None and reporter.due(at):
                published = events - backlog
                reporter.line(
                    progress.drain_line(at, published, events, reporter.rate(at, published))
                )
            meter.sample()
            await asyncio.sleep(POLL_INTERVAL)
        cpu = meter.end()
        rss_end = measure.rss_mib(pids)
        row = await pool.fetchrow(
            """
            SELECT count(*) AS sent, min(published_at) AS first, max(published_at) AS last
            FROM event_outbox WHERE status = 'SENT'
            """
        )
        assert row is not None
    except BaseException:
        if services is not None:
            await system.stop_services(services)
        raise
    finally:
        await pool.close()
    result: dict[str, Any] = {
        "figures": _figures(events, backlog, row, started_at, ready_seconds, insert_seconds),
        "cpu_percent_of_one_core": cpu,
        "rss_mib": measure.rss_figures(rss_start, rss_end, (s["rss_mib"] for s in series)),
        "series": series,
    }
    if backlog:
        result["error"] = (
            f"{backlog:,} of {events:,} rows still NEW after {deadline_for(events):.0f} s"
        )
    return result, services


def _figures(
    events: int,
    backlog: int,
    row: asyncpg.Record,
    started_at: datetime,
    ready_seconds: float,
    insert_seconds: float,
) -> dict[str, Any]:
    first: datetime | None = row["first"]
    last: datetime | None = row["last"]
    span = (last - first).total_seconds() if first and last else None
    # From just before the publisher was started (its Python start-up and connecting included)
    # to the last row marked SENT: both from the database's clock.
    wall = (last - started_at).total_seconds() if last else None
    drained = backlog == 0
    return {
        "events": events,
        "published_events": row["sent"],
        "drained": drained,
        "insert_seconds": round(insert_seconds, 2),
        "publisher_ready_seconds": round(ready_seconds, 2),
        "first_published_at": first.isoformat() if first else None,
        "last_published_at": last.isoformat() if last else None,
        "publish_seconds": round(span, 3) if span is not None else None,
        "wall_seconds": round(wall, 3) if wall is not None else None,
        # N / (max - min published_at): the relay's own pace once it runs.
        "events_per_second": round(events / span, 1) if drained and span else None,
        # N / (publisher start -> drained): what an operator waiting for the drain sees.
        "events_per_second_wall": round(events / wall, 1) if drained and wall else None,
    }


async def check_queue(settings: Settings, events: int) -> dict[str, Any]:
    """The broker really holds every event once: a missing message was lost, an extra one was
    published twice."""
    messages = await queue_depth(settings)
    return {"name": QUEUE.name, "messages": messages, "expected": events, "ok": messages == events}
