"""Quorum queues of QUORUM_GROUP_SIZE members, and queues made before that setting (or with
another size) kept as they are instead of refused."""

from __future__ import annotations

import asyncio
import secrets

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from pamqp.common import FieldTable

from acme_orders.core.events import EXCHANGE
from acme_orders.core.messaging import DELIVERY_LIMIT, declare_queue
from acme_orders.core.topology import QueueSpec
from tests.support.environment import TestEnvironment, rabbitmqctl


async def queue_arguments(env: TestEnvironment, name: str) -> str:
    listed = await asyncio.to_thread(
        rabbitmqctl, "list_queues", "-p", env.name, "name", "arguments"
    )
    [line] = [line for line in listed.splitlines() if line.split("\t")[0] == name]
    return line


async def test_a_new_queue_is_made_with_the_group_size(
    fresh_env: TestEnvironment, fresh_channel: AbstractChannel
) -> None:
    key = f"test.{secrets.token_hex(4)}"
    spec = QueueSpec(f"testsvc.{key}", (key,))

    await declare_queue(fresh_channel, spec, 3)

    for name in (spec.name, spec.dead_letter_queue):
        arguments = await queue_arguments(fresh_env, name)
        assert "x-quorum-initial-group-size" in arguments, arguments
        assert "quorum" in arguments, arguments


@pytest.mark.parametrize("earlier", [None, 5])
async def test_a_queue_made_without_it_or_with_another_size_is_kept(
    fresh_env: TestEnvironment, fresh_channel: AbstractChannel, earlier: int | None
) -> None:
    key = f"test.{secrets.token_hex(4)}"
    spec = QueueSpec(f"testsvc.{key}", (key,))
    made: FieldTable = {"x-queue-type": "quorum"}
    if earlier is not None:
        made["x-quorum-initial-group-size"] = earlier
    work_queue: FieldTable = {
        **made,
        "x-delivery-limit": 10,
        "x-dead-letter-exchange": "acme.events.dlx",
        "x-dead-letter-routing-key": spec.name,
    }
    # As an earlier release declared the pair.
    await fresh_channel.declare_queue(spec.dead_letter_queue, durable=True, arguments=made)
    await fresh_channel.declare_queue(spec.name, durable=True, arguments=work_queue)

    queue = await declare_queue(fresh_channel, spec, 3)

    assert queue.name == spec.name
    assert not fresh_channel.is_closed
    arguments = await queue_arguments(fresh_env, spec.name)
    if earlier is None:
        assert "x-quorum-initial-group-size" not in arguments


async def test_a_message_that_keeps_crashing_its_consumer_is_dead_lettered_by_the_broker(
    fresh_env: TestEnvironment, fresh_channel: AbstractChannel
) -> None:
    # The crash-loop guard under the consumer's own retries: a consumer that dies on a message
    # never settles it, so only RabbitMQ's delivery count can park it.
    key = f"test.{secrets.token_hex(4)}"
    spec = QueueSpec(f"testsvc.{key}", (key,))
    await declare_queue(fresh_channel, spec, 1)
    exchange = await fresh_channel.get_exchange(EXCHANGE)
    await exchange.publish(aio_pika.Message(b'{"poison": true}'), routing_key=key)

    deliveries = 0
    async with await aio_pika.connect(fresh_env.rabbitmq_url) as connection:
        for _ in range(DELIVERY_LIMIT + 5):
            # A channel per delivery, closed without a settle: as a consumer process that dies.
            channel = await connection.channel()
            queue = await channel.get_queue(spec.name)
            message = await queue.get(fail=False)
            await channel.close()
            if message is None:
                break
            deliveries += 1

    assert deliveries == DELIVERY_LIMIT + 1
    dlq = await fresh_channel.get_queue(spec.dead_letter_queue)
    parked = await dlq.get(fail=False)
    assert parked is not None
    assert parked.body == b'{"poison": true}'
