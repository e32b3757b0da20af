"""The idempotent consumer around every handler, against the real RabbitMQ and PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from uuid import uuid4

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from acme_orders.core.consumer import Consumer, Route, serve_consumers
from acme_orders.core.database import Connection
from acme_orders.core.events import EXCHANGE, Event, OrderLine, OrderPlaced
from acme_orders.core.messaging import declare_queue
from acme_orders.core.settings import Settings
from acme_orders.core.topology import QueueSpec
from acme_orders.inventory.stock import reserve_stock
from tests.support.environment import TestEnvironment
from tests.support.waiting import wait_until


@pytest.fixture
async def channel(session_env: TestEnvironment) -> AsyncIterator[AbstractChannel]:
    connection: AbstractRobustConnection = await aio_pika.connect_robust(session_env.rabbitmq_url)
    async with connection:
        yield await connection.channel()


@pytest.fixture
def queue_spec() -> QueueSpec:
    key = f"test.{secrets.token_hex(4)}"
    return QueueSpec(f"testsvc.{key}", (key,))


class Recorder:
    """A handler that remembers what it was given."""

    def __init__(self) -> None:
        self.seen: list[Event] = []

    async def __call__(self, events: Sequence[OrderPlaced], tx: Connection) -> Sequence[Event]:
        self.seen.extend(events)
        return []


async def publish(channel: AbstractChannel, routing_key: str, body: bytes) -> None:
    exchange = await channel.get_exchange(EXCHANGE)
    await exchange.publish(
        aio_pika.Message(body, content_type="application/json", message_id=str(uuid4())),
        routing_key=routing_key,
    )


async def dead_letters(channel: AbstractChannel, spec: QueueSpec) -> list[AbstractIncomingMessage]:
    queue = await channel.get_queue(spec.dead_letter_queue)
    found = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        found.append(message)
    return found


def placed(order_id: object = None) -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id or uuid4(),
        customer_id="C1",
        email="c1@example.com",
        items=(OrderLine(sku="TSHIRT-BLK-M", qty=1, unit_price=Decimal("19.90")),),
        total=Decimal("19.90"),
    )


@pytest.fixture
async def running(
    settings: Settings, channel: AbstractChannel, queue_spec: QueueSpec
) -> AsyncIterator[Recorder]:
    """serve_consumers running a Recorder on the test's own queue."""
    await declare_queue(channel, queue_spec, settings.quorum_group_size)
    recorder = Recorder()
    consumer = Consumer("testsvc", queue_spec, [Route(OrderPlaced, recorder)])
    stop = asyncio.Event()
    task = asyncio.create_task(serve_consumers(settings, stop, "testsvc", [consumer]))
    yield recorder
    stop.set()
    await asyncio.wait_for(task, 30)


POISON = {
    "garbage bytes": (b"\x00\xff\xfegarbage", "body is not JSON"),
    "not an object": (b"[1, 2, 3]", "no event_type"),
    "no event_type": (b'{"order_id": "x"}', "no event_type"),
    "wrong shape": (b'{"event_type": "OrderPlaced", "order_id": "x"}', "invalid OrderPlaced"),
    "unknown version": (
        placed().model_dump_json().replace('"version":1', '"version":2').encode(),
        "invalid OrderPlaced: version",
    ),
}


@pytest.mark.parametrize(("body", "reason"), POISON.values(), ids=POISON.keys())
async def test_poison_message_goes_to_the_dead_letter_queue_with_its_reason(
    running: Recorder, channel: AbstractChannel, queue_spec: QueueSpec, body: bytes, reason: str
) -> None:
    await publish(channel, queue_spec.routing_keys[0], body)
    good = placed()
    await publish(channel, queue_spec.routing_keys[0], good.model_dump_json().encode())

    parked = await wait_until(
        lambda: dead_letters(channel, queue_spec), what="the poison message in the DLQ"
    )
    # The consumer went on to the next message.
    await wait_until(lambda: _async(bool(running.seen)), what="the good message handled")

    assert len(parked) == 1
    assert parked[0].body == body
    headers = parked[0].headers or {}
    assert reason in str(headers["x-dead-letter-reason"])
    assert headers["x-dead-letter-queue"] == queue_spec.name
    assert [e.event_id for e in running.seen] == [good.event_id]


async def test_event_for_an_order_that_does_not_exist_is_dead_lettered(
    settings: Settings, channel: AbstractChannel, queue_spec: QueueSpec
) -> None:
    await declare_queue(channel, queue_spec, settings.quorum_group_size)
    stop = asyncio.Event()
    consumer = Consumer("testsvc", queue_spec, [Route(OrderPlaced, reserve_stock)])
    task = asyncio.create_task(serve_consumers(settings, stop, "testsvc", [consumer]))
    orphan = placed()
    try:
        await publish(channel, queue_spec.routing_keys[0], orphan.model_dump_json().encode())
        parked = await wait_until(lambda: dead_letters(channel, queue_spec), what="DLQ")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    assert (parked[0].headers or {})["x-dead-letter-reason"] == (
        f"order {orphan.order_id} does not exist"
    )


async def test_redelivered_event_is_handled_once(
    running: Recorder, channel: AbstractChannel, queue_spec: QueueSpec, pool: asyncpg.Pool
) -> None:
    event = placed()
    body = event.model_dump_json().encode()
    marker = placed()

    await publish(channel, queue_spec.routing_keys[0], body)
    await publish(channel, queue_spec.routing_keys[0], body)
    await publish(channel, queue_spec.routing_keys[0], marker.model_dump_json().encode())
    await wait_until(
        lambda: _async(marker.event_id in {e.event_id for e in running.seen}),
        what="the marker handled",
    )
    queue = await channel.declare_queue(queue_spec.name, passive=True)
    await wait_until(
        lambda: _async(queue.declaration_result.message_count == 0), what="queue drained"
    )

    assert [e.event_id for e in running.seen].count(event.event_id) == 1
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM processed_events WHERE service = 'testsvc' AND event_id = $1",
            event.event_id,
        )
        == 1
    )


async def _async(value: bool) -> bool:
    return value
