"""Seeing what the system does, against the real processes: an order's timeline read back through
GET /orders/{id}/events and `acme-orders trace` once the pipeline has handled it, and the live
board in headless Chromium (Debian's `chromium`, driven by Playwright) showing orders reach `paid`,
its chart, stuck orders with where they wait, and a dead letter replayed after a dry run.

The board's screenshots are kept with the run's logs: test-output/run-<pid>/board.png (the
operator's board with a stuck order and a dead letter in its dry run) and board-orders.png; with
BOARD_SCREENSHOT_TO_DOCS=1 the first also replaces docs/board.png, the README's picture."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import aio_pika
import asyncpg
import httpx
import pytest
from playwright.async_api import Page

from acme_orders.core.topology import QUEUES
from acme_orders.ops.api_keys import Scope, create_key, revoke_key
from acme_orders.services import SERVICES, WORKERS
from tests.support.browser import watched_page
from tests.support.environment import create_environment, drop_environment
from tests.support.processes import OUTPUT_DIR, ServiceProcess, acme_orders, free_port, stop_all
from tests.support.products import NewProduct, add_product
from tests.support.system import System, start_service
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def new_product(system: System) -> NewProduct:
    return functools.partial(add_product, system.pool)


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def settled_timeline(system: System, order_id: str) -> dict[str, Any]:
    """The order's timeline once every event is published and handled by each of its consumers
    (the notification comes after the order is paid)."""

    async def settled() -> dict[str, Any] | None:
        response = await system.client.get(f"/orders/{order_id}/events")
        assert response.status_code == 200, response.text
        timeline: dict[str, Any] = response.json()
        events = timeline["events"]
        done = events and all(
            event["published_at"] and all(h["processed_at"] for h in event["handled_by"])
            for event in events
        )
        return timeline if done and timeline["status"] == "paid" else None

    return await wait_until(settled, deadline=20, what=f"the timeline of {order_id} to settle")


async def test_the_timeline_of_a_paid_order_shows_each_step_in_causal_order(
    system: System, new_product: NewProduct
) -> None:
    sku = await new_product(stock=10)
    order = await system.place_order([(sku, 2)])

    timeline = await settled_timeline(system, order["id"])

    events = timeline["events"]
    assert [(e["event_type"], e["routing_key"], e["emitted_by"]) for e in events] == [
        ("OrderPlaced", "order.placed", "api"),
        ("InventoryReserved", "inventory.reserved", "inventory"),
        ("PaymentCompleted", "payment.completed", "payment"),
    ]
    assert [[(h["service"], h["queue"]) for h in e["handled_by"]] for e in events] == [
        [("inventory", "inventory.order.placed")],
        [("payment", "payment.inventory.reserved")],
        [("notification", "notification.order.outcome")],
    ]
    placed_at = when(timeline["placed_at"])
    previous_handled = placed_at
    for event in events:
        recorded = when(event["recorded_at"])
        [handling] = event["handled_by"]
        handled = when(handling["processed_at"])
        # Each event is written by the handling of the one before, and handled after it was
        # written and published. (A consumer may record it a moment before the publisher records
        # the broker's confirm: published_at is when the publisher marked it SENT.)
        assert recorded >= previous_handled
        assert when(event["published_at"]) >= recorded
        assert handled > recorded
        # Each hop's lag, per consuming service: taken after it was written, recorded after it
        # was taken.
        received = when(handling["received_at"])
        assert recorded <= received <= handled
        assert event["outbox_seconds"] == pytest.approx(
            (when(event["published_at"]) - recorded).total_seconds(), abs=1e-6
        )
        assert handling["broker_seconds"] >= 0
        assert handling["handling_seconds"] == pytest.approx(
            (handled - received).total_seconds(), abs=1e-6
        )
        previous_handled = handled
    # Where the emitter recorded the cause (correlation and causation ids), it is the event before.
    causes = [event["causation_id"] for event in events]
    if any(causes):
        assert causes == [None, events[0]["event_id"], events[1]["event_id"]]


async def test_trace_prints_the_timeline_of_a_paid_order(
    system: System, new_product: NewProduct
) -> None:
    sku = await new_product(stock=10)
    order = await system.place_order([(sku, 1)])
    await settled_timeline(system, order["id"])

    result = await acme_orders(system.environ, "trace", order["id"])

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"order {order['id']}: paid, placed ")
    assert [line.split()[2] for line in lines[1:7:2]] == [
        "OrderPlaced",
        "InventoryReserved",
        "PaymentCompleted",
    ]
    assert [line.split()[0] for line in lines[2:7:2]] == ["inventory", "payment", "notification"]
    assert all("published +" in line and "(outbox " in line for line in lines[1:7:2])
    assert all(" handled +" in line for line in lines[2:7:2])
    # Per hop, for each consuming service: measured, not unknown.
    assert all(
        re.search(r"\(broker [\d,.]+ ms, handling [\d,.]+ ms\)", line) for line in lines[2:7:2]
    ), lines
    assert lines[-1] == "3 events"


async def watch_orders_on_the_board(page: Page, system: System, base: str) -> None:
    """Open the board, place orders, see them reach their final status, open a timeline."""
    plenty = await add_product(system.pool, stock=50)
    scarce = await add_product(system.pool, stock=1)
    await page.goto(f"{base}/board")
    await page.wait_for_selector('#connection[data-state="live"]')

    paid = [await system.place_order([(plenty, n)]) for n in (1, 2, 3)]
    short = await system.place_order([(scarce, 5)], customer="C200")
    for order in paid:
        await page.wait_for_selector(
            f'#orders tr[data-order-id="{order["id"]}"][data-status="paid"]'
        )
    await page.wait_for_selector(
        f'#orders tr[data-order-id="{short["id"]}"][data-status="out_of_stock"]'
    )
    # Statuses are recounted every few seconds, not with each snapshot.
    await page.wait_for_function(
        "n => Number(document.getElementById('count-paid').textContent) >= n", arg=len(paid)
    )

    await page.click(f'#orders tr[data-order-id="{paid[0]["id"]}"]')
    await page.wait_for_selector("#timeline:not([hidden])")
    # Until the notification is handled too: the page fetches the timeline again with each
    # snapshot until nothing is left to happen.
    await page.wait_for_selector('#timeline-events li[data-event-type="PaymentCompleted"]')
    await page.wait_for_function(
        "() => document.querySelectorAll('#timeline-events li.waiting').length === 0"
    )
    steps = await page.eval_on_selector_all(
        "#timeline-events > li", "items => items.map(item => item.dataset.eventType)"
    )
    assert steps == ["OrderPlaced", "InventoryReserved", "PaymentCompleted"]
    assert "notification: handled +" in await page.inner_text("#timeline-events")
    await page.wait_for_function(
        "() => document.getElementById('outbox-backlog').textContent === '0'"
    )
    queues = await page.eval_on_selector_all(
        "#queues tbody tr", "rows => rows.map(row => row.dataset.queue)"
    )
    assert queues == [spec.name for spec in QUEUES]


async def test_the_board_shows_orders_reaching_paid_and_the_timeline_of_one(
    system: System,
) -> None:
    base = str(system.client.base_url).rstrip("/")
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    screenshot = OUTPUT_DIR / "board-orders.png"
    async with watched_page(base, "board") as watched:
        await watch_orders_on_the_board(watched.page, system, base)
        await watched.page.screenshot(path=str(screenshot), full_page=True)

    assert screenshot.stat().st_size > 10_000
    watched.assert_clean()


@pytest.fixture
async def operator_system() -> AsyncIterator[System]:
    """The five services on a database and vhost of the test's own: the board lists orders stuck
    for more than 2 s, and payment parks a message after its first failed attempt."""
    env = await create_environment(QUEUES)
    port = free_port()
    environ = env.environ(
        API_PORT=str(port),
        PAYMENT_SUCCESS_RATE="1.0",
        BOARD_STUCK_AFTER=str(STUCK_AFTER),
        MAX_ATTEMPTS="1",
        **{f"{name.upper()}_METRICS_PORT": str(free_port()) for name in WORKERS},
    )
    pool = await asyncpg.create_pool(env.database_url, min_size=1, max_size=4)
    assert pool is not None
    processes: dict[str, ServiceProcess] = {}
    try:
        for name in SERVICES:
            processes[name] = await start_service(name, environ, f"operator-board-{name}")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield System(env, environ, client, pool, processes)
    finally:
        try:
            await stop_all([p for p in processes.values() if p.process is not None])
        finally:
            await pool.close()
            await drop_environment(env.name)


STUCK_AFTER = 2
# Payment's card processor breaks for the orders of one product: their payment fails, and with
# MAX_ATTEMPTS=1 the message is parked in payment.inventory.reserved.dlq at once.
BREAK_PAYMENTS = """
CREATE FUNCTION test_refuse_payment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM order_items WHERE order_id = NEW.order_id AND sku = '{sku}') THEN
        RAISE EXCEPTION 'card processor misconfigured (test)';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_refuse_payment BEFORE INSERT ON payments
    FOR EACH ROW EXECUTE FUNCTION test_refuse_payment();
"""
MEND_PAYMENTS = """
DROP TRIGGER test_refuse_payment ON payments;
DROP FUNCTION test_refuse_payment();
"""


async def dlq_depth(system: System, queue: str) -> int:
    connection = await aio_pika.connect(system.env.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(f"{queue}.dlq", passive=True)
        return declared.declaration_result.message_count or 0


async def work_the_operators_board(page: Page, system: System, base: str, shot: Path) -> None:
    """Orders on the chart; one order parked in payment's DLQ and one waiting in the broker for
    payment, both listed as stuck with where they wait; the parked message dry-run and replayed
    from the board; then both orders end paid."""
    await page.goto(f"{base}/board")
    await page.wait_for_selector('#connection[data-state="live"]')
    plenty = await add_product(system.pool, stock=50)
    # Three waves of orders, each once the one before is on the chart (which draws complete
    # buckets of CHART_STEP seconds, recomputed every few seconds), so each has a bucket of its own.
    for wave in range(1, 4):
        for order in [await system.place_order([(plenty, wave)]) for _ in range(wave + 1)]:
            await system.wait_for_final_status(order["id"])
        await page.wait_for_function(
            "n => Number(document.getElementById('throughput-chart').dataset.finishedBuckets) >= n",
            arg=wave,
        )
    await page.wait_for_function(
        "() => [...document.querySelectorAll('#throughput-chart path.finished')]"
        ".some(path => path.getAttribute('d').includes('L'))"
    )
    await page.wait_for_function(
        "() => document.getElementById('latency-now').textContent.startsWith('p50 ')"
    )

    broken = await add_product(system.pool, stock=50)
    await system.pool.execute(BREAK_PAYMENTS.format(sku=broken))
    parked = await system.place_order([(broken, 1)], customer="C300")
    await page.wait_for_selector(
        f'#stuck tr[data-order-id="{parked["id"]}"][data-stage="dead_letter"]'
    )
    payment_queue = "payment.inventory.reserved"
    message_id = str(
        await system.pool.fetchval(
            "SELECT event_id FROM event_outbox WHERE order_id = $1 "
            "AND event_type = 'InventoryReserved'",
            UUID(parked["id"]),
        )
    )
    letter = f'.dlq[data-queue="{payment_queue}"] li[data-message-id="{message_id}"]'
    await page.wait_for_selector(letter)
    assert "handler failed" in await page.inner_text(letter)

    # Payment stopped: the next order waits in the broker for it.
    assert await system.processes["payment"].stop() == 0
    await system.pool.execute(MEND_PAYMENTS)
    waiting = await system.place_order([(plenty, 1)], customer="C400")
    waits = f'#stuck tr[data-order-id="{waiting["id"]}"][data-stage="broker"]'
    await page.wait_for_selector(waits)
    assert f"not handled by payment ({payment_queue})" in await page.inner_text(waits)

    # The dry run lists exactly the parked message and moves nothing.
    await page.click(f"{letter} button.replay-one")
    await page.wait_for_selector('#replay-confirm[data-state="confirm"]')
    listed = await page.eval_on_selector_all(
        "#replay-list li", "items => items.map(item => item.dataset.messageId)"
    )
    assert listed == [message_id]
    assert await dlq_depth(system, payment_queue) == 1
    await page.click(f'#stuck tr[data-order-id="{parked["id"]}"]')
    await page.wait_for_selector('#timeline-events li[data-event-type="InventoryReserved"]')
    await page.screenshot(path=str(shot), full_page=True)

    await page.click("#replay-go")
    await page.wait_for_selector('#replay-confirm[data-state="done"]')
    assert "Replayed 1" in await page.inner_text("#replay-result")
    assert await dlq_depth(system, payment_queue) == 0
    system.processes["payment"] = await start_service(
        "payment", system.environ, "operator-board-payment-again"
    )
    for order in (parked, waiting):
        await page.wait_for_selector(
            f'#orders tr[data-order-id="{order["id"]}"][data-status="paid"]'
        )
    await page.wait_for_function(
        f"() => !document.querySelector('#stuck tr[data-order-id=\"{parked['id']}\"]')"
    )
    await page.wait_for_selector(f"{letter}", state="detached")


async def test_the_operators_board_shows_the_chart_stuck_orders_and_replays_a_dead_letter(
    operator_system: System,
) -> None:
    system = operator_system
    base = str(system.client.base_url).rstrip("/")
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    screenshot = OUTPUT_DIR / "board.png"
    async with watched_page(base, "operator-board") as watched:
        await work_the_operators_board(watched.page, system, base, screenshot)

    assert screenshot.stat().st_size > 10_000
    watched.assert_clean()
    # The replay was the board's, and the log says who made it and which message.
    assert "board: " in system.processes["api"].log()
    assert "replayed 1 message(s)" in system.processes["api"].log()
    if os.environ.get("BOARD_SCREENSHOT_TO_DOCS") == "1":
        shutil.copyfile(screenshot, ROOT / "docs" / "board.png")


# The board API of the stream tests: keys required, read again every half second, each open
# stream's key checked every second, and room for two streams.
RECHECK = 1.0
KEY_TTL = 0.5
MAX_STREAMS = 2


@dataclass
class BoardApi:
    client: httpx.AsyncClient
    pool: asyncpg.Pool

    async def new_admin_key(self) -> tuple[str, dict[str, str]]:
        name = f"board-{secrets.token_hex(4)}"
        token = await create_key(self.pool, name, Scope.ADMIN)
        return name, {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def board_api() -> AsyncIterator[BoardApi]:
    """An API process of the test's own (its own database and vhost, so that its count of open
    streams is the test's alone)."""
    env = await create_environment(QUEUES)
    pool = await asyncpg.create_pool(env.database_url, min_size=1, max_size=2)
    assert pool is not None
    port = free_port()
    environ = env.environ(
        API_PORT=str(port),
        AUTH_DISABLED="0",
        API_KEY_CACHE_TTL=str(KEY_TTL),
        BOARD_STREAM_RECHECK=str(RECHECK),
        BOARD_MAX_STREAMS=str(MAX_STREAMS),
    )
    try:
        process = await start_service("api", environ, "api-board-streams")
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                yield BoardApi(client, pool)
        finally:
            await process.stop()
    finally:
        await pool.close()
        await drop_environment(env.name)


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """The (event, data) of each server-sent event of a stream, comments skipped."""
    event, data = "message", []
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield event, "\n".join(data)
            event, data = "message", []


async def test_the_board_stream_of_a_revoked_key_ends_within_the_recheck(
    board_api: BoardApi,
) -> None:
    name, key = await board_api.new_admin_key()
    seen: list[str] = []
    async with board_api.client.stream("GET", "/board/stream", headers=key) as response:
        assert response.status_code == 200
        events = sse_events(response)
        seen.append((await anext(events))[0])
        await revoke_key(board_api.pool, name)
        # The key cache's TTL, then one recheck, and room for a slow machine.
        within = KEY_TTL + RECHECK + 8
        try:
            async with asyncio.timeout(within):
                async for event, data in events:
                    seen.append(event)
                    last = data
        except TimeoutError:
            pytest.fail(f"the stream of the revoked key was still open after {within}s: {seen}")

    assert seen[0] == "snapshot"
    assert seen[-1] == "end"
    assert "revoked" in json.loads(last)["reason"]
    again = await board_api.client.get("/board/stream", headers=key)
    assert again.status_code == 401


async def test_one_board_stream_past_the_cap_is_refused_with_a_message(
    board_api: BoardApi,
) -> None:
    _, key = await board_api.new_admin_key()
    client = board_api.client
    # The third as a stream too (not a plain GET), so that a stream let in does not hang the test.
    async with (
        client.stream("GET", "/board/stream", headers=key) as first,
        client.stream("GET", "/board/stream", headers=key) as second,
        client.stream("GET", "/board/stream", headers=key) as refused,
    ):
        if refused.status_code != 200:
            await refused.aread()

    async def admitted_again() -> httpx.Response | None:
        async with client.stream("GET", "/board/stream", headers=key) as response:
            return response if response.status_code == 200 else None

    # The two closed streams gave their places back.
    await wait_until(admitted_again, deadline=10, what="a stream to be admitted again")
    assert (first.status_code, second.status_code) == (200, 200)
    assert refused.status_code == 503
    assert "BOARD_MAX_STREAMS" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) >= 1
