"""The operator's board against the real database and broker, in-process: the chart's series, the
stuck orders with where they wait, and the dead letters (listed, a dry run, a replay by message
id), with who may do what. The browser's view is in tests/e2e/test_timeline_and_board.py."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import asyncpg
import httpx
import pytest
from aio_pika.abc import AbstractChannel

from acme_orders.core.settings import Settings
from acme_orders.core.topology import INVENTORY_ORDER_PLACED, QueueSpec
from acme_orders.ops.api_keys import Scope
from acme_orders.order_api.routes.board import CHART_STEP, CHART_WINDOW, Snapshots
from tests.support.api import api_client, key_headers, one_line_order
from tests.support.environment import TestEnvironment
from tests.support.products import add_product
from tests.support.waiting import wait_until

QUEUE = INVENTORY_ORDER_PLACED


async def take_snapshot(pool: asyncpg.Pool, settings: Settings) -> dict[str, Any]:
    snapshots = Snapshots(pool, settings)
    try:
        return await snapshots.take()
    finally:
        await snapshots.close()


async def insert_order(
    pool: asyncpg.Pool, status: str, placed: datetime, finished: datetime
) -> UUID:
    order_id = uuid4()
    await pool.execute(
        """
        INSERT INTO orders (id, customer_id, email, status, total, created_at, updated_at)
        VALUES ($1, 'C900', 'c900@example.com', $2, 10, $3, $4)
        """,
        order_id,
        status,
        placed,
        finished,
    )
    return order_id


async def test_the_chart_has_each_buckets_throughput_and_latency_of_the_window_only(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool
) -> None:
    now: datetime = await fresh_pool.fetchval("SELECT clock_timestamp()")
    # Four orders finished at the same moment, 30 s ago, after 0.1 s to 1 s; one still pending;
    # one placed and finished long before the window, which must not count.
    finished_at = now - timedelta(seconds=30)
    latencies = [0.1, 0.2, 0.3, 1.0]
    for seconds in latencies:
        await insert_order(
            fresh_pool, "paid", finished_at - timedelta(seconds=seconds), finished_at
        )
    await insert_order(fresh_pool, "pending", finished_at, finished_at)
    long_ago = now - timedelta(hours=2)
    await insert_order(fresh_pool, "paid", long_ago, long_ago + timedelta(seconds=1))

    chart = (await take_snapshot(fresh_pool, fresh_env.settings()))["chart"]

    points = chart["points"]
    assert len(points) == CHART_WINDOW.total_seconds() / CHART_STEP
    starts: list[datetime] = [point["at"] for point in points]
    assert all(
        later - earlier == timedelta(seconds=CHART_STEP)
        for earlier, later in itertools.pairwise(starts)
    )
    assert starts[-1] <= now < starts[-1] + 2 * timedelta(seconds=CHART_STEP)
    assert sum(p["placed_per_second"] for p in points) * CHART_STEP == pytest.approx(5)
    assert sum(p["finished_per_second"] for p in points) * CHART_STEP == pytest.approx(4)
    [finished] = [p for p in points if p["finished_per_second"]]
    assert finished["p50_seconds"] == pytest.approx(0.25)
    assert finished["p99_seconds"] == pytest.approx(0.979)
    assert [p["p50_seconds"] for p in points if p is not finished] == [None] * (len(points) - 1)
    assert chart["capped"] is False


async def test_a_stuck_order_is_shown_with_where_it_waits(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool, fresh_channel: AbstractChannel
) -> None:
    settings = fresh_env.settings().model_copy(update={"board_stuck_after": 0.5})
    sku = await add_product(fresh_pool, stock=5)
    async with api_client(settings.model_copy(update={"auth_disabled": True})) as api:
        order = (await api.post("/orders", json=one_line_order(sku))).json()
    placed = await fresh_pool.fetchval(
        "SELECT event_id FROM event_outbox WHERE order_id = $1", UUID(order["id"])
    )
    await fresh_pool.execute(
        "UPDATE orders SET created_at = created_at - interval '5 seconds' WHERE id = $1",
        UUID(order["id"]),
    )

    def stuck(snapshot: dict[str, Any]) -> dict[str, Any]:
        found: list[dict[str, Any]] = [
            o for o in snapshot["stuck"]["orders"] if o["id"] == order["id"]
        ]
        [one] = found
        return one

    in_outbox = stuck(await take_snapshot(fresh_pool, settings))
    await fresh_pool.execute(
        "UPDATE event_outbox SET status = 'SENT', published_at = clock_timestamp() "
        "WHERE event_id = $1",
        placed,
    )
    in_broker = stuck(await take_snapshot(fresh_pool, settings))
    await park(fresh_channel, QUEUE, str(placed), "order does not exist")
    parked = await take_snapshot(fresh_pool, settings)

    assert (in_outbox["stage"], in_outbox["status"]) == ("outbox", "pending")
    assert "not published yet" in in_outbox["where"]
    assert (in_broker["stage"], in_broker["services"], in_broker["queues"]) == (
        "broker",
        ["inventory"],
        [QUEUE.name],
    )
    assert stuck(parked)["stage"] == "dead_letter"
    assert QUEUE.dead_letter_queue in stuck(parked)["where"]
    assert parked["stuck"]["after_seconds"] == 0.5
    # Looking for it left the dead letter where it was.
    await wait_until(lambda: at_least(dlq_depth(fresh_channel, QUEUE), 1), what="the dead letter")


async def at_least(depth: Awaitable[int], wanted: int) -> bool:
    return await depth >= wanted


async def park(channel: AbstractChannel, spec: QueueSpec, message_id: str, reason: str) -> None:
    """A message in the DLQ as the consumer's dead_letter() leaves it."""
    body = {"event_id": message_id, "event_type": "OrderPlaced", "order_id": str(uuid4())}
    await channel.default_exchange.publish(
        aio_pika.Message(
            json.dumps(body).encode(),
            headers={
                "x-dead-letter-reason": reason,
                "x-dead-letter-queue": spec.name,
                "x-dead-lettered-at": datetime.now(UTC).isoformat(),
            },
            message_id=message_id,
            type="OrderPlaced",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=spec.dead_letter_queue,
    )


async def dlq_depth(channel: AbstractChannel, spec: QueueSpec) -> int:
    queue = await channel.declare_queue(spec.dead_letter_queue, passive=True)
    return queue.declaration_result.message_count or 0


async def queue_depth(channel: AbstractChannel, spec: QueueSpec) -> int:
    queue = await channel.declare_queue(spec.name, passive=True)
    return queue.declaration_result.message_count or 0


@pytest.fixture
async def keyed_api(fresh_env: TestEnvironment) -> AsyncIterator[httpx.AsyncClient]:
    """The API on the test's own database and vhost, keys required."""
    settings = fresh_env.settings().model_copy(update={"auth_disabled": False})
    async with api_client(settings) as client:
        yield client


REPLAY = f"/board/dead-letters/{QUEUE.name}/replay"


async def test_dead_letters_need_an_admin_key(
    keyed_api: httpx.AsyncClient, fresh_pool: asyncpg.Pool, fresh_channel: AbstractChannel
) -> None:
    writer = await key_headers(fresh_pool, Scope.ORDERS_WRITE)
    await park(fresh_channel, QUEUE, str(uuid4()), "order does not exist")
    body = {"message_ids": None, "dry_run": False}

    for headers, expected in (({}, 401), (writer, 403)):
        listed = await keyed_api.get("/board/dead-letters", headers=headers)
        dry_run = await keyed_api.post(REPLAY, json={}, headers=headers)
        replay = await keyed_api.post(REPLAY, json=body, headers=headers)
        assert (listed.status_code, dry_run.status_code, replay.status_code) == (expected,) * 3

    assert await dlq_depth(fresh_channel, QUEUE) == 1


async def test_a_dry_run_changes_nothing_and_the_replay_moves_exactly_its_messages(
    keyed_api: httpx.AsyncClient, fresh_pool: asyncpg.Pool, fresh_channel: AbstractChannel
) -> None:
    admin = await key_headers(fresh_pool, Scope.ADMIN)
    first, second = str(uuid4()), str(uuid4())
    await park(fresh_channel, QUEUE, first, "order x does not exist")
    await park(fresh_channel, QUEUE, second, "order y does not exist")

    listed = await keyed_api.get("/board/dead-letters", headers=admin)
    dry_run = await keyed_api.post(REPLAY, json={"dry_run": True}, headers=admin)
    # Parked after the dry run: a replay of the dry run's messages leaves it alone.
    later = str(uuid4())
    await park(fresh_channel, QUEUE, later, "order z does not exist")
    assert await dlq_depth(fresh_channel, QUEUE) == 3
    assert await queue_depth(fresh_channel, QUEUE) == 0
    ids = [message["message_id"] for message in dry_run.json()["messages"]]
    gone = str(uuid4())
    replay = await keyed_api.post(
        REPLAY, json={"message_ids": [*ids, gone], "dry_run": False}, headers=admin
    )

    assert listed.status_code == 200, listed.text
    by_queue = {q["queue"]: q for q in listed.json()["queues"]}
    assert [m["message_id"] for m in by_queue[QUEUE.name]["messages"]] == [first, second]
    assert by_queue[QUEUE.name]["messages"][0]["reason"] == "order x does not exist"
    assert by_queue[QUEUE.name]["dead_letter_queue"] == QUEUE.dead_letter_queue
    assert dry_run.status_code == 200, dry_run.text
    assert dry_run.json()["dry_run"] is True
    assert ids == [first, second]
    assert replay.status_code == 200, replay.text
    assert replay.json()["dry_run"] is False
    assert [m["message_id"] for m in replay.json()["messages"]] == [first, second]
    assert replay.json()["missing"] == [gone]
    await wait_until(
        lambda: at_least(queue_depth(fresh_channel, QUEUE), 2), what="the two in the queue"
    )
    remaining = await keyed_api.get("/board/dead-letters", headers=admin)
    by_queue = {q["queue"]: q for q in remaining.json()["queues"]}
    assert [m["message_id"] for m in by_queue[QUEUE.name]["messages"]] == [later]


async def test_a_replay_of_one_message_moves_that_one(
    keyed_api: httpx.AsyncClient, fresh_pool: asyncpg.Pool, fresh_channel: AbstractChannel
) -> None:
    admin = await key_headers(fresh_pool, Scope.ADMIN)
    one, other = str(uuid4()), str(uuid4())
    await park(fresh_channel, QUEUE, one, "order x does not exist")
    await park(fresh_channel, QUEUE, other, "order y does not exist")

    dry_run = await keyed_api.post(REPLAY, json={"message_ids": [one]}, headers=admin)
    replay = await keyed_api.post(
        REPLAY, json={"message_ids": [one], "dry_run": False}, headers=admin
    )

    assert [m["message_id"] for m in dry_run.json()["messages"]] == [one]
    assert [m["message_id"] for m in replay.json()["messages"]] == [one]

    # The other is given back to the DLQ as the replay ends; the broker counts it a moment later.
    async def depths() -> tuple[int, int] | None:
        found = (await dlq_depth(fresh_channel, QUEUE), await queue_depth(fresh_channel, QUEUE))
        return found if found == (1, 1) else None

    await wait_until(depths, deadline=10, what="one message in the DLQ and one in the queue")


async def test_a_replay_refuses_what_another_site_or_a_bad_request_could_send(
    keyed_api: httpx.AsyncClient, fresh_pool: asyncpg.Pool, fresh_channel: AbstractChannel
) -> None:
    admin = await key_headers(fresh_pool, Scope.ADMIN)
    message_id = str(uuid4())
    await park(fresh_channel, QUEUE, message_id, "order x does not exist")
    body = {"message_ids": [message_id], "dry_run": False}

    as_form = await keyed_api.post(
        REPLAY,
        content=json.dumps(body),
        headers=admin | {"Content-Type": "text/plain"},
    )
    other_site = await keyed_api.post(
        REPLAY, json=body, headers=admin | {"Origin": "http://evil.example"}
    )
    own_site = await keyed_api.post(
        REPLAY, json={"message_ids": [message_id]}, headers=admin | {"Origin": "http://api"}
    )
    without_ids = await keyed_api.post(REPLAY, json={"dry_run": False}, headers=admin)
    too_many = await keyed_api.post(
        REPLAY, json={"message_ids": [str(uuid4()) for _ in range(101)]}, headers=admin
    )
    unknown = await keyed_api.post(
        "/board/dead-letters/nosuch.queue/replay", json={"dry_run": True}, headers=admin
    )

    assert as_form.status_code == 415
    assert other_site.status_code == 403
    assert "evil.example" in other_site.json()["detail"]
    assert own_site.status_code == 200
    assert without_ids.status_code == 422
    assert "message_ids" in without_ids.json()["detail"]
    assert too_many.status_code == 422
    assert unknown.status_code == 404
    await wait_until(lambda: at_least(dlq_depth(fresh_channel, QUEUE), 1), what="it left in place")
    assert await queue_depth(fresh_channel, QUEUE) == 0
