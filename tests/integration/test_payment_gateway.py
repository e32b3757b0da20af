"""Payment through its gateway, against the real RabbitMQ and PostgreSQL: a gateway that does not
answer holds the order up, never parks it, and every attempt carries the order's key."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aio_pika
import asyncpg
import pytest

from acme_orders.core import consumer as consumer_module
from acme_orders.core.consumer import serve_consumers
from acme_orders.core.events import EXCHANGE
from acme_orders.core.messaging import DELIVERY_LIMIT
from acme_orders.core.topology import PAYMENT, PAYMENT_INVENTORY_RESERVED
from acme_orders.payment.gateway import (
    Charge,
    ChargeResult,
    GatewayUnavailableError,
    SimulatedGateway,
    charge_idempotency_key,
)
from acme_orders.payment.service import consumers
from tests.support.environment import TestEnvironment
from tests.support.events import reserved_order
from tests.support.waiting import wait_until


@dataclass
class UnansweringGateway:
    """The simulation behind a link that times out the first `silent` charges."""

    silent: int
    keys: list[str] = field(default_factory=list)
    name: str = "simulated"

    async def charge(self, charge: Charge) -> ChargeResult:
        self.keys.append(charge.idempotency_key)
        if len(self.keys) <= self.silent:
            raise GatewayUnavailableError("the gateway did not answer within 10s")
        return await SimulatedGateway(1.0).charge(charge)


async def test_a_gateway_that_does_not_answer_delays_the_order_and_never_parks_it(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer_module, "RETRY_PAUSE_MAX", 0.01)
    # Longer than RabbitMQ would let a message be delivered before it dead-letters it.
    gateway = UnansweringGateway(silent=DELIVERY_LIMIT + 5)
    event = await reserved_order(fresh_pool)
    order_id = event.order_id
    settings = fresh_env.settings()
    stop = asyncio.Event()
    service = asyncio.create_task(
        serve_consumers(settings, stop, PAYMENT, consumers(settings, gateway))
    )
    connection = await aio_pika.connect(fresh_env.rabbitmq_url)
    try:
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(EXCHANGE)
            await exchange.publish(
                aio_pika.Message(event.model_dump_json().encode(), message_id=str(event.event_id)),
                routing_key=event.routing_key,
            )

            dead_letters = await channel.declare_queue(
                PAYMENT_INVENTORY_RESERVED.dead_letter_queue, passive=True
            )

            async def outcome() -> str | None:
                status = await fresh_pool.fetchval(
                    "SELECT status FROM orders WHERE id = $1", order_id
                )
                if status != "reserved":
                    return str(status)
                parked = await channel.declare_queue(dead_letters.name, passive=True)
                return "dead-lettered" if parked.declaration_result.message_count else None

            settled = await wait_until(outcome, deadline=30, what="the order charged or parked")
    finally:
        stop.set()
        await asyncio.wait_for(service, 30)

    assert settled == "paid"
    assert gateway.keys == [charge_idempotency_key(order_id)] * (gateway.silent + 1)
    assert (
        await fresh_pool.fetchval("SELECT count(*) FROM payments WHERE order_id = $1", order_id)
        == 1
    )
