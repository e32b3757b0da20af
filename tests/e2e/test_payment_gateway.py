"""The payment's gateway sees one idempotency key per order, whatever happens to the process that
charges it: real payment processes against the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import json
import re
from uuid import UUID

import aio_pika
import asyncpg
import pytest

from acme_orders.core.events import EXCHANGE, InventoryReserved
from acme_orders.payment.gateway import charge_idempotency_key, payment_id_for
from tests.support.environment import TestEnvironment
from tests.support.events import event_message, reserved_order
from tests.support.processes import ServiceProcess
from tests.support.system import start_service
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

# What the simulated gateway logs for each charge it is asked to make.
GATEWAY_SAW = re.compile(
    r"simulated gateway: \w+ [\d.]+ for order \S+ \(idempotency key ([\w-]+)\)"
)


def keys_seen(process: ServiceProcess) -> list[str]:
    return GATEWAY_SAW.findall(process.log())


async def publish(rabbitmq_url: str, event: InventoryReserved) -> None:
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE)
        await exchange.publish(
            event_message(event),
            routing_key=event.routing_key,
        )


async def test_a_charge_redelivered_after_a_crash_reaches_the_gateway_with_the_same_key(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool
) -> None:
    event = await reserved_order(fresh_pool)
    order_id = event.order_id
    env = fresh_env.environ()
    # Holds the payment's transaction between the gateway's answer and its commit: the payment
    # is recorded last, and this lock keeps that insert waiting.
    blocker = await asyncpg.connect(fresh_env.database_url)
    first: ServiceProcess | None = None
    second: ServiceProcess | None = None
    try:
        held = blocker.transaction()
        await held.start()
        await blocker.execute("LOCK TABLE payments IN SHARE MODE")
        first = await start_service("payment", env, log_name=f"payment-{order_id}-first")
        await publish(fresh_env.rabbitmq_url, event)

        await first.wait_for_log(f"for order {order_id} (idempotency key")

        async def waiting_to_record_the_payment() -> bool:
            waiting = await fresh_pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO payments%'"
            )
            return bool(waiting)

        await wait_until(waiting_to_record_the_payment, what="the charge waiting for its commit")
        # The gateway said yes, and the process dies before its transaction commits: RabbitMQ
        # delivers the unacked message again, to the next payment process.
        first.kill()
        await held.rollback()
        second = await start_service("payment", env, log_name=f"payment-{order_id}-second")

        async def paid() -> bool:
            status = await fresh_pool.fetchval("SELECT status FROM orders WHERE id = $1", order_id)
            return bool(status == "paid")

        await wait_until(paid, what="the order paid by the second process")
    finally:
        await blocker.close()
        if first is not None:
            first.kill()
        if second is not None:
            await second.stop()

    key = charge_idempotency_key(order_id)
    assert keys_seen(first) == [key]
    assert keys_seen(second) == [key]
    payments = await fresh_pool.fetch(
        "SELECT idempotency_key, gateway, outcome, payment_id FROM payments WHERE order_id = $1",
        order_id,
    )
    assert [dict(p) for p in payments] == [
        {
            "idempotency_key": key,
            "gateway": "simulated",
            "outcome": "completed",
            "payment_id": payment_id_for(key),
        }
    ]
    completed = await fresh_pool.fetch(
        "SELECT payload FROM event_outbox WHERE order_id = $1 AND event_type = 'PaymentCompleted'",
        order_id,
    )
    assert [UUID(json.loads(row["payload"])["payment_id"]) for row in completed] == [
        payment_id_for(key)
    ]
