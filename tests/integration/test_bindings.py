"""Each queue bound to exactly the routing keys its routes take, and an upgrade removing, by
itself, a binding an earlier release made, against the real RabbitMQ."""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractChannel

from acme_orders.core.events import EXCHANGE
from acme_orders.core.messaging import declare_topology
from acme_orders.core.topology import NOTIFICATION_ORDER_OUTCOME, QUEUES
from tests.support.environment import TestEnvironment, rabbitmqctl


async def binding_keys(env: TestEnvironment, queue: str) -> set[str]:
    """The keys `queue` is bound to acme.events with, as RabbitMQ lists them."""
    listed = await asyncio.to_thread(
        rabbitmqctl,
        "list_bindings",
        "-p",
        env.name,
        "source_name",
        "destination_name",
        "routing_key",
        "--no-table-headers",
    )
    rows = [line.split("\t") for line in listed.splitlines()]
    return {row[2] for row in rows if len(row) == 3 and row[:2] == [EXCHANGE, queue]}


async def test_migrate_binds_each_queue_to_exactly_its_keys_and_unbinds_retired_ones(
    fresh_env: TestEnvironment, fresh_channel: AbstractChannel
) -> None:
    spec = NOTIFICATION_ORDER_OUTCOME
    # As the release before issue 14 left it: bound to every payment event, present and future.
    queue = await fresh_channel.get_queue(spec.name)
    await queue.bind(EXCHANGE, routing_key="payment.*")
    assert "payment.*" in await binding_keys(fresh_env, spec.name)

    # What `acme-orders migrate` does, and each consumer for its own queues at start.
    await declare_topology(fresh_env.settings(), QUEUES)

    assert await binding_keys(fresh_env, spec.name) == {
        "payment.completed",
        "payment.failed",
        "order.out_of_stock",
        "order.cancelled",
    }
    for each in QUEUES:
        assert await binding_keys(fresh_env, each.name) == set(each.routing_keys), each.name
