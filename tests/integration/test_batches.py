"""Handlers take a batch of events in one transaction and decide exactly as they would one at a
time; the consumer sends a batch's failures to the right message. Against the real PostgreSQL
and RabbitMQ."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from acme_orders.core import consumer as consumer_module
from acme_orders.core.consumer import Consumer, ConsumerRunner, Handler, Route
from acme_orders.core.database import Connection
from acme_orders.core.events import (
    Event,
    InventoryReserved,
    OrderLine,
    OrderOutOfStock,
    OrderPlaced,
    PaymentCompleted,
    PaymentFailed,
)
from acme_orders.core.messaging import declare_dead_letter_exchange, declare_queue
from acme_orders.core.orders import UnprocessableEventError
from acme_orders.core.settings import Settings
from acme_orders.core.topology import QueueSpec
from acme_orders.inventory.stock import release_stock, reserve_stock
from acme_orders.notification.email import send_notifications
from acme_orders.payment.charge import charge_orders
from acme_orders.payment.gateway import Charge, ChargeResult, SimulatedGateway
from tests.support.products import NewProduct, stock_of
from tests.support.waiting import wait_until

PRICE = Decimal("10.00")


async def new_order(pool: asyncpg.Pool, status: str = "pending") -> UUID:
    order_id = uuid4()
    await pool.execute(
        "INSERT INTO orders (id, customer_id, email, status, total) VALUES ($1, 'C1', $2, $3, 0)",
        order_id,
        "c1@example.com",
        status,
    )
    return order_id


def placed(order_id: UUID, lines: dict[str, int]) -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id,
        customer_id="C1",
        email="c1@example.com",
        items=tuple(OrderLine(sku=sku, qty=qty, unit_price=PRICE) for sku, qty in lines.items()),
        total=PRICE * sum(lines.values()),
    )


def reserved(event: OrderPlaced) -> InventoryReserved:
    return InventoryReserved(
        order_id=event.order_id,
        customer_id=event.customer_id,
        email=event.email,
        items=event.items,
        total=event.total,
    )


async def statuses(pool: asyncpg.Pool, *order_ids: UUID) -> list[str]:
    return [
        await pool.fetchval("SELECT status FROM orders WHERE id = $1", order_id)
        for order_id in order_ids
    ]


async def in_one_transaction(
    pool: asyncpg.Pool, work: Callable[[Connection], Awaitable[Sequence[Event]]]
) -> Sequence[Event]:
    async with pool.acquire() as conn, conn.transaction():
        return await work(conn)


async def test_a_batch_reserves_in_delivery_order_as_one_event_at_a_time_would(
    pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    scarce, plenty = await new_product(3), await new_product(100)
    wants = [{scarce: 2, plenty: 1}, {scarce: 2}, {plenty: 5}, {scarce: 1}]
    events = [placed(await new_order(pool), lines) for lines in wants]

    emitted = await in_one_transaction(pool, lambda tx: reserve_stock(events, tx))

    # The first order takes 2 of the 3, the second finds 1 left, the fourth takes it.
    assert [e.event_type for e in emitted] == [
        "InventoryReserved",
        "OrderOutOfStock",
        "InventoryReserved",
        "InventoryReserved",
    ]
    shortage = emitted[1]
    assert isinstance(shortage, OrderOutOfStock)
    assert [(s.sku, s.requested, s.available) for s in shortage.shortages] == [(scarce, 2, 1)]
    assert await statuses(pool, *(e.order_id for e in events)) == [
        "reserved",
        "out_of_stock",
        "reserved",
        "reserved",
    ]
    assert await stock_of(pool, scarce) == 0
    assert await stock_of(pool, plenty) == 94
    reservations = await pool.fetch(
        "SELECT order_id, sku, qty FROM stock_reservations WHERE order_id = ANY($1::uuid[])",
        [e.order_id for e in events],
    )
    assert sorted((r["order_id"], r["sku"], r["qty"]) for r in reservations) == sorted(
        [
            (events[0].order_id, scarce, 2),
            (events[0].order_id, plenty, 1),
            (events[2].order_id, plenty, 5),
            (events[3].order_id, scarce, 1),
        ]
    )


async def test_a_batch_reserves_an_order_named_twice_once(
    pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(10)
    event = placed(await new_order(pool), {sku: 4})
    again = event.model_copy(update={"event_id": uuid4()})

    emitted = await in_one_transaction(pool, lambda tx: reserve_stock([event, again], tx))

    assert len(emitted) == 1
    assert await stock_of(pool, sku) == 6


async def test_a_batch_releases_every_failed_order_and_sums_shared_products(
    pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    shared, other = await new_product(10), await new_product(10)
    orders = [{shared: 2, other: 1}, {shared: 3}]
    events = [placed(await new_order(pool), lines) for lines in orders]
    await in_one_transaction(pool, lambda tx: reserve_stock(events, tx))
    await in_one_transaction(pool, lambda tx: charge_orders([reserved(e) for e in events], tx, _no))
    failures = [
        PaymentFailed(
            order_id=e.order_id,
            customer_id="C1",
            email="c1@example.com",
            amount=e.total,
            reason="card declined",
        )
        for e in events
    ]

    emitted = await in_one_transaction(pool, lambda tx: release_stock(failures, tx))
    again = await in_one_transaction(pool, lambda tx: release_stock(failures, tx))

    assert [e.event_type for e in emitted] == ["InventoryReleased", "InventoryReleased"]
    assert [(line.sku, line.qty) for line in emitted[0].items] == sorted(  # type: ignore[attr-defined]
        [(shared, 2), (other, 1)]
    )
    assert again == []
    assert await stock_of(pool, shared) == 10
    assert await stock_of(pool, other) == 10
    assert await statuses(pool, *(e.order_id for e in events)) == [
        "payment_failed",
        "payment_failed",
    ]


# Declines every charge.
_no = SimulatedGateway(success_rate=0.0)


@dataclass
class ScriptedGateway:
    """A gateway that gives the answers it is given, one per charge."""

    answers: Iterator[bool]
    name: str = "scripted"

    async def charge(self, charge: Charge) -> ChargeResult:
        approved = next(self.answers)
        declined = None if approved else "card declined"
        return ChargeResult(approved, f"scripted-{charge.idempotency_key}", declined)


async def test_a_batch_charges_each_reserved_order_once(
    pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(10)
    events = [placed(await new_order(pool, "reserved"), {sku: 1}) for _ in range(3)]
    already_paid = placed(await new_order(pool, "reserved"), {sku: 1})
    await pool.execute("UPDATE orders SET status = 'paid' WHERE id = $1", already_paid.order_id)
    gateway = ScriptedGateway(iter([True, False, True]))
    batch = [reserved(e) for e in [*events, already_paid]]
    batch.append(batch[0].model_copy(update={"event_id": uuid4()}))

    emitted = await in_one_transaction(pool, lambda tx: charge_orders(batch, tx, gateway))

    assert [e.event_type for e in emitted] == [
        "PaymentCompleted",
        "PaymentFailed",
        "PaymentCompleted",
    ]
    assert await statuses(pool, *(e.order_id for e in events), already_paid.order_id) == [
        "paid",
        "payment_failed",
        "paid",
        "paid",
    ]


async def test_a_batch_sends_each_order_each_e_mail_once(pool: asyncpg.Pool) -> None:
    order_ids = [await new_order(pool, "paid") for _ in range(2)]
    paid = [
        PaymentCompleted(
            order_id=order_id,
            customer_id="C1",
            email="c1@example.com",
            amount=PRICE,
            payment_id=uuid4(),
        )
        for order_id in order_ids
    ]
    batch = [*paid, paid[0].model_copy(update={"event_id": uuid4()})]

    await in_one_transaction(pool, lambda tx: send_notifications(batch, tx))
    await in_one_transaction(pool, lambda tx: send_notifications(paid, tx))

    sent = await pool.fetch(
        "SELECT order_id, kind FROM notifications WHERE order_id = ANY($1::uuid[])", order_ids
    )
    assert sorted((r["order_id"], r["kind"]) for r in sent) == sorted(
        (order_id, "order_paid") for order_id in order_ids
    )


@dataclass
class Delivered:
    """Events published to a queue of the test's own and taken off it, unacked, as one batch
    for a ConsumerRunner to process."""

    channel: AbstractChannel
    queue: AbstractQueue
    runner: ConsumerRunner
    batch: list[AbstractIncomingMessage]


@asynccontextmanager
async def delivered(
    settings: Settings,
    pool: asyncpg.Pool,
    events: Sequence[OrderPlaced],
    handler: Handler[Any],
    *,
    linger: float = 0.0,
    max_batch: int = 32,
) -> AsyncIterator[Delivered]:
    key = f"test.{secrets.token_hex(4)}"
    spec = QueueSpec(f"testsvc.{key}", (key,))
    connection = await aio_pika.connect_robust(settings.rabbitmq_url)
    async with connection:
        channel: AbstractChannel = await connection.channel(publisher_confirms=True)
        queue = await declare_queue(channel, spec, settings.quorum_group_size)
        # Sent to the queue by its name: through acme.events an event travels with its own
        # routing key, which would reach every test queue of the run.
        for event in events:
            await channel.default_exchange.publish(
                aio_pika.Message(event.model_dump_json().encode(), message_id=str(event.event_id)),
                routing_key=spec.name,
            )
        runner = ConsumerRunner(
            Consumer("testsvc", spec, [Route(OrderPlaced, handler)], linger=linger),
            pool,
            await declare_dead_letter_exchange(channel),
            asyncio.Event(),
            max_batch=max_batch,
        )
        batch = [await queue.get(no_ack=False) for _ in events]
        yield Delivered(channel, queue, runner, batch)


async def test_an_event_that_spoils_a_batch_is_dead_lettered_alone(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    bad = placed(uuid4(), {"X": 1})
    good = [placed(uuid4(), {"X": 1}) for _ in range(5)]
    batches: list[int] = []

    async def handler(events: Sequence[OrderPlaced], tx: Connection) -> Sequence[Event]:
        batches.append(len(events))
        if any(e.event_id == bad.event_id for e in events):
            raise UnprocessableEventError("this one never succeeds")
        return []

    async with delivered(settings, pool, [good[0], good[1], bad, *good[2:]], handler) as d:
        await d.runner.process(d.batch)

        dlq = await d.channel.get_queue(f"{d.queue.name}.dlq")
        parked = await dlq.get(no_ack=True)
        left = await d.channel.declare_queue(d.queue.name, passive=True)

    # One batch of six spoilt by the bad event, then each event alone.
    assert batches == [6, 1, 1, 1, 1, 1, 1]
    assert parked.message_id == str(bad.event_id)
    assert (parked.headers or {})["x-dead-letter-reason"] == "this one never succeeds"
    assert await _processed(pool, good) == {e.event_id for e in good}
    assert await _processed(pool, [bad]) is None
    assert left.declaration_result.message_count == 0


async def _processed(pool: asyncpg.Pool, events: Sequence[Event]) -> set[UUID] | None:
    rows = await pool.fetch(
        "SELECT event_id FROM processed_events WHERE service = 'testsvc' "
        "AND event_id = ANY($1::uuid[])",
        [e.event_id for e in events],
    )
    found = {r["event_id"] for r in rows}
    return found if len(found) == len(events) else None


async def test_a_message_waiting_for_its_requeue_is_not_acked_with_its_batch(
    settings: Settings, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer_module, "RETRY_PAUSE_MAX", 0.01)
    flaky, *good = [placed(uuid4(), {"X": 1}) for _ in range(3)]

    async def handler(events: Sequence[OrderPlaced], tx: Connection) -> Sequence[Event]:
        if any(e.event_id == flaky.event_id for e in events):
            raise RuntimeError("a passing failure")
        return []

    # The flaky one first: the batch's last message is good, and a multiple-ack of it would take
    # the flaky one too.
    async with delivered(settings, pool, [flaky, *good], handler) as d:
        await d.runner.process(d.batch)
        await d.runner.drained()

        back = await wait_until(
            lambda: d.queue.get(no_ack=True, fail=False), what="the flaky message requeued"
        )
        rest = await d.queue.get(no_ack=True, fail=False)

    assert back.message_id == str(flaky.event_id)
    assert back.redelivered
    assert rest is None
    assert await _processed(pool, good) == {e.event_id for e in good}


@asynccontextmanager
async def running(runner: ConsumerRunner) -> AsyncIterator[None]:
    loop = asyncio.create_task(runner.run())
    try:
        yield
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def hand_over(runner: ConsumerRunner, messages: Sequence[AbstractIncomingMessage]) -> None:
    """Give the runner its first message and wait until it has begun a batch with it (and, when
    it lingers, waits for more); then give it the rest."""
    first, *rest = messages
    await runner.on_message(first)
    await wait_until(lambda: _async(runner.inbox.empty()), what="the first message taken")
    for message in rest:
        await runner.on_message(message)


def recording(batches: list[list[UUID]]) -> Handler[OrderPlaced]:
    async def handler(events: Sequence[OrderPlaced], tx: Connection) -> Sequence[Event]:
        batches.append([e.event_id for e in events])
        return []

    return handler


async def test_a_lingering_consumer_handles_what_arrives_within_its_linger_as_one_batch(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    events = [placed(uuid4(), {"X": 1}) for _ in range(4)]
    batches: list[list[UUID]] = []

    async with (
        delivered(settings, pool, events, recording(batches), linger=3.0) as d,
        running(d.runner),
    ):
        await hand_over(d.runner, d.batch)
        await wait_until(lambda: _async(batches), what="a batch handled")
        await d.runner.drained()

    assert batches == [[e.event_id for e in events]]
    assert await _processed(pool, events) == {e.event_id for e in events}


async def test_a_full_batch_does_not_wait_out_the_linger(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    events = [placed(uuid4(), {"X": 1}) for _ in range(4)]
    batches: list[list[UUID]] = []

    # A linger far longer than the wait below: only a full batch can end it in time.
    async with (
        delivered(settings, pool, events, recording(batches), linger=600.0, max_batch=4) as d,
        running(d.runner),
    ):
        await hand_over(d.runner, d.batch)
        await wait_until(lambda: _async(batches), what="the full batch handled")

    assert batches == [[e.event_id for e in events]]


async def test_a_stop_cuts_a_linger_short(settings: Settings, pool: asyncpg.Pool) -> None:
    event = placed(uuid4(), {"X": 1})
    batches: list[list[UUID]] = []

    async with (
        delivered(settings, pool, [event], recording(batches), linger=600.0) as d,
        running(d.runner),
    ):
        await hand_over(d.runner, d.batch)
        d.runner.stop.set()
        # What a service does on SIGTERM: wait for the messages it holds to be settled.
        await asyncio.wait_for(d.runner.drained(), timeout=15)

    assert batches == [[event.event_id]]
    assert await _processed(pool, [event]) == {event.event_id}


async def _async(value: Any) -> Any:
    return value
