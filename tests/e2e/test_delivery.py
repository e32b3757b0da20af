"""Every queue parks what it cannot read; every consumer ignores what it has already handled."""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from acme_orders.core.events import EVENT_TYPES
from acme_orders.core.topology import QUEUES, QueueSpec
from tests.support.products import NewProduct, add_product, stock_of
from tests.support.system import System
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def new_product(system: System) -> NewProduct:
    return functools.partial(add_product, system.pool)


@pytest.fixture
async def channel(system: System) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(system.env.rabbitmq_url)
    async with connection:
        yield await connection.channel(publisher_confirms=True)


async def send_to_queue(
    channel: AbstractChannel, queue: str, body: bytes, message_id: str = "poison"
) -> None:
    """Straight into one queue (the default exchange), so no other subscriber sees it."""
    await channel.default_exchange.publish(
        aio_pika.Message(body, message_id=message_id, content_type="application/json"),
        routing_key=queue,
    )


def event_type_for(spec: QueueSpec) -> str:
    """An event type the queue's consumer handles: the first whose routing key it is bound to."""
    for binding in spec.routing_keys:
        for cls in EVENT_TYPES:
            # Our bindings are exact keys or "<word>.*", which fnmatch reads the same way.
            if fnmatch.fnmatchcase(cls.routing_key, binding):
                return cls.__name__
    raise AssertionError(f"no event type for {spec.name}")


@pytest.mark.parametrize("spec", QUEUES, ids=lambda spec: spec.name)
async def test_every_queue_dead_letters_garbage_and_wrong_shapes_with_the_reason(
    system: System, channel: AbstractChannel, spec: QueueSpec
) -> None:
    wrong_shape = f'{{"event_type": "{event_type_for(spec)}", "order_id": "nope"}}'.encode()

    await send_to_queue(channel, spec.name, b"\x00\x01 not json at all")
    await send_to_queue(channel, spec.name, wrong_shape)

    dlq = await channel.get_queue(spec.dead_letter_queue)
    parked: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def both_parked() -> bool:
        while (message := await dlq.get(no_ack=True, fail=False)) is not None:
            parked.append(message)
        return len(parked) >= 2

    await wait_until(both_parked, what=f"two dead letters in {spec.dead_letter_queue}")
    reasons = {bytes(m.body): str((m.headers or {})["x-dead-letter-reason"]) for m in parked}
    assert reasons[b"\x00\x01 not json at all"].startswith("body is not JSON")
    assert reasons[wrong_shape].startswith(f"invalid {event_type_for(spec)}")
    # The consumer lives on: the pipeline still works.
    sku = await add_product(system.pool, stock=1)
    order = await system.place_order([(sku, 1)])
    assert (await system.wait_for_final_status(order["id"]))["status"] == "paid"


async def outbox_payload(system: System, order_id: str, event_type: str) -> tuple[str, str]:
    row = await system.pool.fetchrow(
        """
        SELECT event_id, payload::text AS payload FROM event_outbox
        WHERE order_id = $1 AND event_type = $2
        """,
        UUID(order_id),
        event_type,
    )
    assert row is not None, f"no {event_type} for order {order_id}"
    return str(row["event_id"]), row["payload"]


async def snapshot(system: System, order_id: str, skus: list[str]) -> dict[str, Any]:
    """What a second handling of an event would change."""
    order = (await system.client.get(f"/orders/{order_id}")).json()
    return {
        "status": order["status"],
        "updated_at": order["updated_at"],
        "stock": [await stock_of(system.pool, sku) for sku in skus],
        "events": await system.pool.fetchval(
            "SELECT count(*) FROM event_outbox WHERE order_id = $1", UUID(order_id)
        ),
        "notifications": await system.pool.fetchval(
            "SELECT count(*) FROM notifications WHERE order_id = $1", UUID(order_id)
        ),
    }


# Each consumer, and an event of each type it handles, from an order that reached that outcome.
REDELIVERIES = [
    ("inventory", "inventory.order.placed", "OrderPlaced", "paid"),
    ("payment", "payment.inventory.reserved", "InventoryReserved", "paid"),
    ("notification", "notification.order.outcome", "PaymentCompleted", "paid"),
    ("inventory", "inventory.payment.failed", "PaymentFailed", "payment_failed"),
    ("notification", "notification.order.outcome", "PaymentFailed", "payment_failed"),
    ("notification", "notification.order.outcome", "OrderOutOfStock", "out_of_stock"),
]


@pytest.fixture(scope="module")
async def finished_orders(system: System) -> dict[str, tuple[str, list[str]]]:
    """One settled order per outcome: outcome -> (order id, its skus)."""
    orders: dict[str, tuple[str, list[str]]] = {}
    paid_sku = await add_product(system.pool, stock=5)
    paid = await system.place_order([(paid_sku, 2)])
    short_sku = await add_product(system.pool, stock=1)
    short = await system.place_order([(short_sku, 2)])
    for order, sku in ((paid, paid_sku), (short, short_sku)):
        await system.wait_until_settled(order["id"])
        orders[(await system.wait_for_final_status(order["id"]))["status"]] = (order["id"], [sku])
    failed_sku = await add_product(system.pool, stock=5)
    await system.replace("payment", PAYMENT_SUCCESS_RATE="0")
    try:
        failed = await system.place_order([(failed_sku, 3)])
        await system.wait_until_settled(failed["id"])

        async def released() -> bool:
            return await stock_of(system.pool, failed_sku) == 5

        await wait_until(released, what="the failed order's stock released")
    finally:
        await system.replace("payment", PAYMENT_SUCCESS_RATE="1.0")
    orders["payment_failed"] = (failed["id"], [failed_sku])
    return orders


@pytest.mark.parametrize(
    ("service", "queue", "event_type", "outcome"),
    REDELIVERIES,
    ids=[f"{service}-{event}" for service, _, event, _ in REDELIVERIES],
)
async def test_every_consumer_ignores_an_event_it_has_already_handled(
    system: System,
    channel: AbstractChannel,
    finished_orders: dict[str, tuple[str, list[str]]],
    service: str,
    queue: str,
    event_type: str,
    outcome: str,
) -> None:
    order_id, skus = finished_orders[outcome]
    event_id, payload = await outbox_payload(system, order_id, event_type)
    before = await snapshot(system, order_id, skus)

    await send_to_queue(channel, queue, payload.encode(), message_id=event_id)
    await system.processes[service].wait_for_log(
        f"duplicate {event_type} {event_id} for order {order_id} ignored"
    )

    assert await snapshot(system, order_id, skus) == before
