"""The metrics that need the servers: the gauges the publisher samples from the database, and a
worker's metrics server on a real port."""

from __future__ import annotations

import logging
import socket
from datetime import timedelta
from uuid import uuid4

import asyncpg
import httpx
import pytest

from acme_orders.core.observability.metrics import ORDERS_WINDOW
from acme_orders.core.observability.metrics_server import serve_metrics
from acme_orders.core.orders import OrderStatus, count_recent_orders
from acme_orders.core.outbox import backlog
from acme_orders.core.settings import Settings
from tests.support.processes import free_port


async def add_order(pool: asyncpg.Pool, status: str, age: timedelta = timedelta(0)) -> None:
    await pool.execute(
        """
        INSERT INTO orders (id, customer_id, email, status, total, created_at)
        VALUES ($1, 'C1', 'c1@example.com', $2, 1, clock_timestamp() - $3::interval)
        """,
        uuid4(),
        status,
        age,
    )


async def add_outbox_row(pool: asyncpg.Pool, status: str, age: timedelta) -> None:
    await pool.execute(
        """
        INSERT INTO event_outbox (event_id, event_type, routing_key, payload, status, created_at)
        VALUES ($1, 'OrderPlaced', 'order.placed', '{}', $2, clock_timestamp() - $3::interval)
        """,
        uuid4(),
        status,
        age,
    )


async def test_outbox_backlog_counts_new_rows_and_ages_the_oldest(fresh_pool: asyncpg.Pool) -> None:
    async with fresh_pool.acquire() as conn:
        empty = await backlog(conn)
        await add_outbox_row(fresh_pool, "SENT", timedelta(hours=1))
        await add_outbox_row(fresh_pool, "NEW", timedelta(seconds=90))
        await add_outbox_row(fresh_pool, "NEW", timedelta(seconds=1))

        waiting = await backlog(conn)

    assert (empty.new_rows, empty.oldest_id, empty.oldest_age) == (0, None, None)
    assert waiting.new_rows == 2
    assert waiting.oldest_age is not None
    assert 90 <= waiting.oldest_age.total_seconds() < 120


async def test_recent_orders_are_counted_by_status_within_the_window(
    fresh_pool: asyncpg.Pool,
) -> None:
    for status in ("pending", "paid", "paid", "out_of_stock", "cancelled"):
        await add_order(fresh_pool, status)
    await add_order(fresh_pool, "paid", age=ORDERS_WINDOW + timedelta(minutes=1))

    async with fresh_pool.acquire() as conn:
        counts = await count_recent_orders(conn, ORDERS_WINDOW)

    assert counts == {
        OrderStatus.PENDING: 1,
        OrderStatus.RESERVED: 0,
        OrderStatus.PAID: 2,
        OrderStatus.PAYMENT_FAILED: 0,
        OrderStatus.OUT_OF_STOCK: 1,
        OrderStatus.CANCELLED: 1,
    }


async def test_a_worker_serves_metrics_and_health_on_its_port_until_it_stops() -> None:
    port = free_port()
    settings = Settings(inventory_metrics_port=port)
    url = f"http://127.0.0.1:{port}"

    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        async with serve_metrics(settings, "inventory"):
            metrics = await client.get("/metrics")
            # No connections open in this process: not healthy.
            health = await client.get("/health")

        assert metrics.status_code == 200
        assert "# HELP acme_events_consumed_total" in metrics.text
        assert health.status_code == 503
        with pytest.raises(httpx.ConnectError):
            await client.get("/health")


async def test_a_taken_port_is_logged_and_the_worker_runs_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        settings = Settings(payment_metrics_port=port)

        with caplog.at_level(logging.ERROR):
            async with serve_metrics(settings, "payment"):
                pass

    assert f"cannot serve /metrics and /health on 127.0.0.1:{port}" in caplog.text


async def test_port_zero_serves_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        async with serve_metrics(Settings(notification_metrics_port=0), "notification"):
            pass

    assert "metrics on" not in caplog.text
