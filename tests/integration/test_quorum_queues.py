"""Quorum queues of QUORUM_GROUP_SIZE members, and queues made before that setting (or with
another size) kept as they are instead of refused."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from aio_pika.abc import AbstractChannel
from pamqp.common import FieldTable

from acme_orders.core.messaging import declare_queue
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
