"""Listing and replaying dead letters, against the real RabbitMQ."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from uuid import uuid4

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from acme_orders.core.messaging import declare_queue
from acme_orders.core.settings import Settings
from acme_orders.core.topology import QueueSpec
from acme_orders.ops.dead_letters import (
    UnknownQueueError,
    list_dead_letters,
    replay_dead_letters,
)
from tests.support.environment import TestEnvironment
from tests.support.waiting import wait_until


@pytest.fixture
def env_settings(fresh_env: TestEnvironment) -> Settings:
    return fresh_env.settings()


@pytest.fixture
async def queue_spec(fresh_channel: AbstractChannel, env_settings: Settings) -> QueueSpec:
    key = f"test.{secrets.token_hex(4)}"
    spec = QueueSpec(f"testsvc.{key}", (key,))
    await declare_queue(fresh_channel, spec, env_settings.quorum_group_size)
    return spec


def event_body(event_type: str = "OrderPlaced") -> tuple[bytes, str]:
    order_id = str(uuid4())
    body = {"event_id": str(uuid4()), "event_type": event_type, "order_id": order_id}
    return json.dumps(body).encode(), order_id


async def park(
    channel: AbstractChannel, spec: QueueSpec, body: bytes, reason: str, *, type_: str | None
) -> str:
    """Put a message in the DLQ as the consumer's dead_letter() does; returns its message id."""
    message_id = str(uuid4())
    await channel.default_exchange.publish(
        aio_pika.Message(
            body,
            headers={
                "x-dead-letter-reason": reason,
                "x-dead-letter-queue": spec.name,
                "x-dead-lettered-at": datetime.now(UTC).isoformat(),
                "x-custom": "kept",
            },
            content_type="application/json",
            message_id=message_id,
            type=type_,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=spec.dead_letter_queue,
    )
    return message_id


async def dead_lettered_by_rabbitmq(channel: AbstractChannel, spec: QueueSpec, body: bytes) -> str:
    """A message RabbitMQ itself moved to the DLQ, with its x-death header: rejected without
    requeue, as happens at the delivery limit."""
    message_id = str(uuid4())
    await channel.default_exchange.publish(
        aio_pika.Message(body, message_id=message_id, content_type="application/json"),
        routing_key=spec.name,
    )
    queue = await channel.get_queue(spec.name)
    message = await wait_until(lambda: queue.get(fail=False), what="the message in the queue")
    await message.reject(requeue=False)
    await wait_until(
        lambda: dlq_count(channel, spec, at_least=1), what="RabbitMQ to dead-letter the message"
    )
    return message_id


async def dlq_count(channel: AbstractChannel, spec: QueueSpec, *, at_least: int = 0) -> int | None:
    queue = await channel.declare_queue(spec.dead_letter_queue, passive=True)
    count = queue.declaration_result.message_count or 0
    return count if count >= at_least else None


async def drain(channel: AbstractChannel, name: str) -> list[AbstractIncomingMessage]:
    queue = await channel.get_queue(name)
    found = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        found.append(message)
    return found


async def test_list_shows_every_dead_letter_with_its_reason_and_removes_none(
    fresh_channel: AbstractChannel, queue_spec: QueueSpec, env_settings: Settings
) -> None:
    parked_body, parked_order = event_body()
    parked_id = await park(
        fresh_channel, queue_spec, parked_body, "order x does not exist", type_="OrderPlaced"
    )
    # No AMQP type: the event type comes from the body.
    untyped_body, untyped_order = event_body("PaymentFailed")
    untyped_id = await park(
        fresh_channel, queue_spec, untyped_body, "invalid PaymentFailed", type_=None
    )
    garbage_id = await park(
        fresh_channel, queue_spec, b"\x00\xffgarbage", "body is not JSON", type_=None
    )
    broker_body, broker_order = event_body()
    broker_id = await dead_lettered_by_rabbitmq(fresh_channel, queue_spec, broker_body)

    letters = await list_dead_letters(env_settings, [queue_spec.name])

    by_id = {letter.message_id: letter for letter in letters}
    assert [letter.message_id for letter in letters] == [
        parked_id,
        untyped_id,
        garbage_id,
        broker_id,
    ]
    parked = by_id[parked_id]
    assert parked.queue == queue_spec.name
    assert parked.event_type == "OrderPlaced"
    assert parked.order_id == parked_order
    assert parked.reason == "order x does not exist"
    assert parked.dead_lettered_at is not None
    assert parked.body_preview == parked_body.decode()
    assert (by_id[untyped_id].event_type, by_id[untyped_id].order_id) == (
        "PaymentFailed",
        untyped_order,
    )
    garbage = by_id[garbage_id]
    assert (garbage.event_type, garbage.order_id) == (None, None)
    assert garbage.body_preview.endswith("garbage")
    broker = by_id[broker_id]
    assert broker.reason == "rejected (by RabbitMQ)"
    assert broker.queue == queue_spec.name
    assert broker.order_id == broker_order
    assert broker.dead_lettered_at is not None
    # Nothing was taken: listing again finds the same, in the same order.
    await wait_until(
        lambda: dlq_count(fresh_channel, queue_spec, at_least=4), what="every dead letter back"
    )
    assert await dlq_count(fresh_channel, queue_spec) == 4
    again = await list_dead_letters(env_settings, [queue_spec.dead_letter_queue])
    assert [letter.message_id for letter in again] == [letter.message_id for letter in letters]


async def test_list_of_an_empty_dlq_is_empty(queue_spec: QueueSpec, env_settings: Settings) -> None:
    assert await list_dead_letters(env_settings, [queue_spec.name]) == []


async def test_replay_with_ids_moves_only_those_back_to_the_queue(
    fresh_channel: AbstractChannel, queue_spec: QueueSpec, env_settings: Settings
) -> None:
    bodies = [event_body()[0] for _ in range(3)]
    ids = [
        await park(fresh_channel, queue_spec, body, f"reason {n}", type_="OrderPlaced")
        for n, body in enumerate(bodies)
    ]

    moved = await replay_dead_letters(env_settings, queue_spec.name, {ids[1]})

    assert moved == 1
    back = await wait_until(
        lambda: drain(fresh_channel, queue_spec.name), what="the replayed message in the queue"
    )
    assert len(back) == 1
    replayed = back[0]
    assert replayed.body == bodies[1]
    assert replayed.message_id == ids[1]
    assert replayed.type == "OrderPlaced"
    assert replayed.content_type == "application/json"
    assert replayed.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    headers = replayed.headers or {}
    assert not {"x-dead-letter-reason", "x-dead-letter-queue", "x-dead-lettered-at"} & set(headers)
    assert headers["x-custom"] == "kept"
    assert "x-replayed-at" in headers
    # The others stay in the DLQ, in their order.
    await wait_until(lambda: dlq_count(fresh_channel, queue_spec, at_least=2), what="the rest back")
    assert [
        letter.message_id for letter in await list_dead_letters(env_settings, [queue_spec.name])
    ] == [ids[0], ids[2]]


async def test_replay_without_ids_moves_them_all_and_drops_x_death(
    fresh_channel: AbstractChannel, queue_spec: QueueSpec, env_settings: Settings
) -> None:
    parked_id = await park(fresh_channel, queue_spec, event_body()[0], "some reason", type_=None)
    broker_id = await dead_lettered_by_rabbitmq(fresh_channel, queue_spec, event_body()[0])

    # Given by its DLQ's name, which works as well.
    moved = await replay_dead_letters(env_settings, queue_spec.dead_letter_queue, None)

    assert moved == 2
    back: list[AbstractIncomingMessage] = []

    async def both_back() -> bool:
        back.extend(await drain(fresh_channel, queue_spec.name))
        return len(back) >= 2

    await wait_until(both_back, what="both messages back in the queue")
    assert [m.message_id for m in back] == [parked_id, broker_id]
    assert "x-death" not in (back[1].headers or {})
    assert await dlq_count(fresh_channel, queue_spec) == 0
    assert await replay_dead_letters(env_settings, queue_spec.name, None) == 0


async def test_replay_to_the_queue_only_not_to_other_subscribers(
    fresh_channel: AbstractChannel, queue_spec: QueueSpec, env_settings: Settings
) -> None:
    # Another service bound to the same routing key must not get the replayed event again.
    other = QueueSpec(f"othersvc.{queue_spec.routing_keys[0]}", queue_spec.routing_keys)
    await declare_queue(fresh_channel, other, env_settings.quorum_group_size)
    await park(fresh_channel, queue_spec, event_body()[0], "some reason", type_="OrderPlaced")

    assert await replay_dead_letters(env_settings, queue_spec.name, None) == 1

    await wait_until(lambda: drain(fresh_channel, queue_spec.name), what="the replayed message")
    assert await drain(fresh_channel, other.name) == []


async def test_unknown_queue_is_reported(env_settings: Settings) -> None:
    with pytest.raises(UnknownQueueError, match=r"nosuch\.queue\.dlq"):
        await list_dead_letters(env_settings, ["nosuch.queue"])
    with pytest.raises(UnknownQueueError, match=r"nosuch\.queue"):
        await replay_dead_letters(env_settings, "nosuch.queue", None)
