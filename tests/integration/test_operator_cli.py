"""The operator commands (`acme-orders outbox ...`, `acme-orders dlq ...`) as an operator runs
them: the installed console script, in a process of its own, configured by the environment."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from uuid import uuid4

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from acme_orders.core.topology import INVENTORY_ORDER_PLACED
from tests.support.environment import TestEnvironment
from tests.support.processes import acme_orders, free_port


async def park(channel: AbstractChannel, reason: str) -> tuple[str, str]:
    """A message in inventory's DLQ, as its consumer parks one; returns (message id, order id)."""
    message_id, order_id = str(uuid4()), str(uuid4())
    body = {"event_id": message_id, "event_type": "OrderPlaced", "order_id": order_id}
    await channel.default_exchange.publish(
        aio_pika.Message(
            json.dumps(body).encode(),
            headers={
                "x-dead-letter-reason": reason,
                "x-dead-letter-queue": INVENTORY_ORDER_PLACED.name,
                "x-dead-lettered-at": datetime.now(UTC).isoformat(),
            },
            content_type="application/json",
            message_id=message_id,
            type="OrderPlaced",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=INVENTORY_ORDER_PLACED.dead_letter_queue,
    )
    return message_id, order_id


async def test_outbox_status_prints_the_counts_and_the_oldest_new_row(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool
) -> None:
    empty = await acme_orders(fresh_env.environ(), "outbox", "status")
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout == "NEW 0, SENT 0; no NEW rows\n"

    await fresh_pool.executemany(
        """
        INSERT INTO event_outbox (event_id, event_type, routing_key, payload, status, created_at)
        VALUES ($1, 'TestHappened', 'test.happened', '{}', $2, now() - interval '90 seconds')
        """,
        [(uuid4(), "NEW"), (uuid4(), "NEW"), (uuid4(), "SENT")],
    )
    first_new = await fresh_pool.fetchval("SELECT min(id) FROM event_outbox WHERE status = 'NEW'")

    result = await acme_orders(fresh_env.environ(), "outbox", "status")

    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"NEW 2, SENT 1; oldest NEW: id {first_new}, 1m 3\ds old\n", result.stdout
    ), result.stdout


async def test_outbox_purge_prints_what_it_deleted(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool
) -> None:
    await fresh_pool.execute(
        """
        INSERT INTO event_outbox (event_id, event_type, routing_key, payload, status, published_at)
        VALUES ($1, 'TestHappened', 'test.happened', '{}', 'SENT', now() - interval '8 days')
        """,
        uuid4(),
    )

    result = await acme_orders(fresh_env.environ(), "outbox", "purge")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("deleted 1 SENT outbox rows (older than 7d), ")
    assert await fresh_pool.fetchval("SELECT count(*) FROM event_outbox") == 0


async def test_dlq_list_prints_each_dead_letter_with_its_reason(
    fresh_env: TestEnvironment, fresh_channel: AbstractChannel
) -> None:
    empty = await acme_orders(fresh_env.environ(), "dlq", "list")
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout == "no dead letters\n"

    message_id, order_id = await park(fresh_channel, f"order {uuid4()} does not exist")

    # Without a queue, every consumer queue's DLQ is looked at.
    result = await acme_orders(fresh_env.environ(), "dlq", "list")

    assert result.returncode == 0, result.stderr
    first, second, last = result.stdout.splitlines()
    assert first.startswith(f"{INVENTORY_ORDER_PLACED.name}  ")
    assert f"message {message_id}" in first
    assert "OrderPlaced" in first
    assert f"order {order_id}" in first
    assert second.strip().startswith("reason: order ")
    assert second.strip().endswith(" does not exist")
    assert last == "1 dead letter"


async def test_dlq_replay_of_one_id_prints_one_moved(
    fresh_env: TestEnvironment, fresh_channel: AbstractChannel
) -> None:
    message_id, _ = await park(fresh_channel, "reason one")
    await park(fresh_channel, "reason two")

    result = await acme_orders(
        fresh_env.environ(), "dlq", "replay", INVENTORY_ORDER_PLACED.name, "--id", message_id
    )

    assert result.returncode == 0, result.stderr
    queue = INVENTORY_ORDER_PLACED
    assert result.stdout == f"1 moved from {queue.dead_letter_queue} back to {queue.name}\n"
    back = await fresh_channel.get_queue(INVENTORY_ORDER_PLACED.name)
    replayed = await back.get(no_ack=True, fail=False)
    assert replayed is not None
    assert replayed.message_id == message_id


@pytest.mark.parametrize(
    ("args", "server", "variable"),
    [
        (("outbox", "status"), "PostgreSQL", "DATABASE_URL"),
        (("outbox", "purge"), "PostgreSQL", "DATABASE_URL"),
        (("dlq", "list"), "RabbitMQ", "RABBITMQ_URL"),
        (("dlq", "replay", INVENTORY_ORDER_PLACED.name), "RabbitMQ", "RABBITMQ_URL"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else str(value),
)
async def test_a_server_that_is_not_there_is_one_line_on_stderr_and_exit_1(
    fresh_env: TestEnvironment, args: tuple[str, ...], server: str, variable: str
) -> None:
    # Nothing listens on a port that was free a moment ago.
    port = free_port()
    url = {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/nothing",
        "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{port}/",
    }[variable]

    result = await acme_orders(fresh_env.environ(**{variable: url}), *args)

    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"acme-orders {' '.join(args[:2])}: {server}: ")


async def test_an_unknown_queue_is_one_line_on_stderr_and_exit_1(
    fresh_env: TestEnvironment,
) -> None:
    result = await acme_orders(fresh_env.environ(), "dlq", "list", "nosuch.queue")

    assert result.returncode == 1
    assert (
        result.stderr == "acme-orders dlq list: RabbitMQ: queue 'nosuch.queue.dlq' does not exist\n"
    )
