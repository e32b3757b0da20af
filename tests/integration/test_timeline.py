"""GET /orders/{id}/events and the live board, in-process over ASGI against the real database and
broker: who may read what, what the timeline says at each step, the board's page and what its
snapshots hold. The pipeline itself runs in tests/e2e/test_timeline_and_board.py."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import asyncpg
import httpx
import orjson
import pytest
from aio_pika.abc import AbstractChannel

from acme_orders.core.settings import Settings
from acme_orders.core.topology import INVENTORY_ORDER_PLACED
from acme_orders.ops.api_keys import Scope
from acme_orders.order_api.routes.board import Snapshots, snapshot_event
from tests.support.api import api_client, key_headers, one_line_order
from tests.support.environment import TestEnvironment
from tests.support.processes import acme_orders, free_port
from tests.support.products import NewProduct, add_product


@asynccontextmanager
async def running_api(settings: Settings, *, auth: bool) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(
        settings.model_copy(update={"auth_disabled": not auth, "rate_limit_orders_per_second": 0})
    ) as client:
        yield client


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_api(settings, auth=True) as client:
        yield client


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def test_a_new_order_has_one_event_waiting_in_the_outbox_for_inventory(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(stock=5)
    writer = await key_headers(pool, Scope.ORDERS_WRITE)
    order = (await api.post("/orders", json=one_line_order(sku), headers=writer)).json()

    response = await api.get(f"/orders/{order['id']}/events", headers=writer)

    assert response.status_code == 200, response.text
    timeline = response.json()
    assert (timeline["order_id"], timeline["status"]) == (order["id"], "pending")
    assert timeline["placed_at"] == order["created_at"]
    [event] = timeline["events"]
    assert (event["event_type"], event["routing_key"], event["emitted_by"]) == (
        "OrderPlaced",
        "order.placed",
        "api",
    )
    assert event["published_at"] is None
    assert event["outbox_seconds"] is None  # still waiting there
    assert event["handled_by"] == [
        {
            "service": "inventory",
            "queue": "inventory.order.placed",
            "processed_at": None,
            "received_at": None,
            "broker_seconds": None,
            "handling_seconds": None,
        }
    ]
    assert event["causation_id"] is None
    assert when(event["recorded_at"]) >= when(order["created_at"])


async def test_the_timeline_shows_publishing_and_handling_as_they_are_recorded(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(stock=5)
    admin = await key_headers(pool, Scope.ADMIN)
    writer = await key_headers(pool, Scope.ORDERS_WRITE)
    order = (await api.post("/orders", json=one_line_order(sku), headers=writer)).json()
    order_id = UUID(order["id"])
    placed = await pool.fetchval("SELECT event_id FROM event_outbox WHERE order_id = $1", order_id)
    # What the publisher and inventory record, by hand: the event SENT, handled by inventory,
    # which emitted InventoryReserved (not published yet).
    await pool.execute(
        "UPDATE event_outbox SET status = 'SENT', published_at = clock_timestamp() "
        "WHERE event_id = $1",
        placed,
    )
    await pool.execute(
        "INSERT INTO processed_events (service, event_id) VALUES ('inventory', $1)", placed
    )
    reserved = uuid4()
    await pool.execute(
        """
        INSERT INTO event_outbox (event_id, event_type, routing_key, order_id, payload)
        VALUES ($1, 'InventoryReserved', 'inventory.reserved', $2, $3::jsonb)
        """,
        reserved,
        order_id,
        f'{{"occurred_at": "{datetime.now(UTC).isoformat()}", "causation_id": "{placed}"}}',
    )

    timeline = (await api.get(f"/orders/{order_id}/events", headers=admin)).json()

    first, second = timeline["events"]
    assert first["published_at"] is not None
    [inventory] = first["handled_by"]
    assert inventory["service"] == "inventory"
    assert when(inventory["processed_at"]) >= when(first["recorded_at"])
    assert first["outbox_seconds"] == pytest.approx(
        (when(first["published_at"]) - when(first["recorded_at"])).total_seconds(), abs=1e-6
    )
    # Recorded without received_at, as rows written before db/011 are: those hops are unknown.
    assert inventory["received_at"] is None
    assert (inventory["broker_seconds"], inventory["handling_seconds"]) == (None, None)
    assert (second["event_id"], second["event_type"], second["emitted_by"]) == (
        str(reserved),
        "InventoryReserved",
        "inventory",
    )
    assert second["causation_id"] == str(placed)
    assert second["published_at"] is None
    assert second["handled_by"] == [
        {
            "service": "payment",
            "queue": "payment.inventory.reserved",
            "processed_at": None,
            "received_at": None,
            "broker_seconds": None,
            "handling_seconds": None,
        }
    ]


async def test_the_timeline_follows_the_rule_of_get_order(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(stock=5)
    alice = await key_headers(pool, Scope.ORDERS_WRITE)
    bob = await key_headers(pool, Scope.ORDERS_WRITE)
    admin = await key_headers(pool, Scope.ADMIN)
    order = (await api.post("/orders", json=one_line_order(sku), headers=alice)).json()
    path = f"/orders/{order['id']}/events"

    as_alice = await api.get(path, headers=alice)
    as_bob = await api.get(path, headers=bob)
    as_admin = await api.get(path, headers=admin)
    anonymous = await api.get(path)
    unknown = await api.get(f"/orders/{uuid4()}/events", headers=admin)
    malformed = await api.get("/orders/not-an-id/events", headers=admin)

    assert as_alice.status_code == as_admin.status_code == 200
    # Another key's order is as absent as one that does not exist.
    assert as_bob.status_code == unknown.status_code == 404
    assert as_bob.json()["detail"] == f"order {order['id']} not found"
    assert anonymous.status_code == 401
    assert malformed.status_code == 422


async def test_the_board_page_is_served_whole_and_loads_nothing_from_elsewhere(
    api: httpx.AsyncClient,
) -> None:
    page = await api.get("/board")
    script = await api.get("/board/board.js")
    style = await api.get("/board/board.css")

    assert page.status_code == script.status_code == style.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert script.headers["content-type"].startswith("text/javascript")
    assert style.headers["content-type"].startswith("text/css")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for text in (page.text, script.text, style.text):
        # No absolute URL, and no protocol-relative one (`//host/...`) in an attribute or string.
        assert "http:" not in text
        assert "https:" not in text
        assert not re.search(r"[\"'(]\s*//", text)
    assert '<script src="/board/board.js"' in page.text
    # The stream and the static files stay out of the API's schema.
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert "/orders/{order_id}/events" in paths
    assert not [path for path in paths if path.startswith("/board")]


async def test_the_board_stream_needs_an_admin_key(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    writer = await key_headers(pool, Scope.ORDERS_WRITE)

    anonymous = await api.get("/board/stream")
    as_writer = await api.get("/board/stream", headers=writer)

    assert anonymous.status_code == 401
    assert as_writer.status_code == 403


def queue_figures(snapshot: dict[str, Any]) -> dict[str, tuple[int | None, int | None]]:
    return {q["queue"]: (q["ready"], q["dead_letters"]) for q in snapshot["queues"]}


async def test_a_snapshot_holds_the_newest_orders_the_counts_the_backlog_and_the_queues(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool, fresh_channel: AbstractChannel
) -> None:
    settings = fresh_env.settings()
    sku = await add_product(fresh_pool, stock=5)
    async with running_api(settings, auth=False) as api:
        orders = [(await api.post("/orders", json=one_line_order(sku))).json() for _ in range(3)]
    await fresh_channel.default_exchange.publish(
        aio_pika.Message(b"{}", message_id=str(uuid4())),
        routing_key=INVENTORY_ORDER_PLACED.dead_letter_queue,
    )
    snapshots = Snapshots(fresh_pool, settings)
    try:
        snapshot = await snapshots.take()
    finally:
        await snapshots.close()

    assert snapshot["database"] is None
    assert snapshot["broker"] is None
    # As the stream sends it.
    event = snapshot_event(snapshot)
    assert event.startswith(b"event: snapshot\ndata: {")
    assert event.endswith(b"}\n\n")
    assert json.loads(event.split(b"data: ", 1)[1]) == json.loads(orjson.dumps(snapshot))
    assert [order["id"] for order in snapshot["orders"]] == [
        order["id"] for order in reversed(orders)
    ]
    assert {order["status"] for order in snapshot["orders"]} == {"pending"}
    assert snapshot["counts"]["by_status"] == {
        "pending": 3,
        "reserved": 0,
        "paid": 0,
        "payment_failed": 0,
        "out_of_stock": 0,
        "cancelled": 0,
    }
    assert snapshot["outbox"]["backlog"] == 3
    assert snapshot["outbox"]["oldest_seconds"] >= 0
    figures = queue_figures(snapshot)
    assert figures == {
        "inventory.order.placed": (0, 1),
        "inventory.payment.failed": (0, 0),
        "inventory.order.cancelled": (0, 0),
        "payment.inventory.reserved": (0, 0),
        "notification.order.outcome": (0, 0),
    }


async def test_a_snapshot_without_the_broker_still_shows_the_database(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    unreachable = settings.model_copy(
        update={"rabbitmq_url": f"amqp://guest:guest@127.0.0.1:{free_port()}/"}
    )
    snapshots = Snapshots(pool, unreachable)
    try:
        snapshot = await snapshots.take()
        again = await snapshots.take()
    finally:
        await snapshots.close()

    assert snapshot["database"] is None
    assert isinstance(snapshot["outbox"]["backlog"], int)
    assert snapshot["broker"] is not None
    assert snapshot["broker"].startswith("RabbitMQ: ")
    assert {figure for figure in queue_figures(snapshot).values()} == {(None, None)}
    # It does not knock again at once: the same answer until BROKER_RETRY has passed.
    assert again["broker"] == snapshot["broker"]


async def test_trace_prints_the_timeline_and_refuses_an_unknown_order(
    session_env: TestEnvironment, pool: asyncpg.Pool, settings: Settings, new_product: NewProduct
) -> None:
    sku = await new_product(stock=5)
    async with running_api(settings, auth=False) as api:
        order = (await api.post("/orders", json=one_line_order(sku))).json()
    missing = uuid4()

    traced = await acme_orders(session_env.environ(), "trace", order["id"])
    unknown = await acme_orders(session_env.environ(), "trace", str(missing))
    malformed = await acme_orders(session_env.environ(), "trace", "not-an-id")

    assert traced.returncode == 0, traced.stderr
    lines = traced.stdout.splitlines()
    assert lines[0].startswith(f"order {order['id']}: pending, placed ")
    assert lines[1].split()[2:] == [
        "OrderPlaced",
        "order.placed",
        "by",
        "api",
        "not",
        "published",
        "yet",
    ]
    assert lines[2].split() == [
        "inventory",
        "not",
        "handled",
        "yet",
        "(queue",
        "inventory.order.placed)",
    ]
    assert lines[3] == "1 event"
    assert unknown.returncode == 1
    assert unknown.stdout == ""
    assert unknown.stderr.strip().endswith(f"acme-orders trace: no order {missing}")
    assert malformed.returncode == 2
    assert "invalid UUID value" in malformed.stderr
