"""The idempotent consumer around every handler, against the real RabbitMQ and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from urllib.parse import quote, urlsplit
from uuid import uuid4

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import DeliveryError
from prometheus_client import REGISTRY

from acme_orders.core.consumer import Consumer, ConsumerRunner, Route, serve_consumers
from acme_orders.core.database import Connection
from acme_orders.core.events import EXCHANGE, Event, OrderLine, OrderPlaced, PaymentFailed
from acme_orders.core.messaging import declare_dead_letter_exchange, declare_queue
from acme_orders.core.settings import Settings
from acme_orders.core.topology import QueueSpec
from acme_orders.inventory.stock import reserve_stock
from tests.support.environment import RABBITMQ_BASE_URL, TestEnvironment, rabbitmqctl
from tests.support.faults import TcpProxy
from tests.support.waiting import wait_until

BROKER = urlsplit(RABBITMQ_BASE_URL)


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


async def publish(channel: AbstractChannel, spec: QueueSpec, body: bytes) -> None:
    """Send a message to the test's queue by its name: through acme.events, an event must travel
    with its own routing key, which every test queue of this run would then receive."""
    await channel.default_exchange.publish(
        aio_pika.Message(body, content_type="application/json", message_id=str(uuid4())),
        routing_key=spec.name,
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
    await publish(channel, queue_spec, body)
    good = placed()
    await publish(channel, queue_spec, good.model_dump_json().encode())

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
        await publish(channel, queue_spec, orphan.model_dump_json().encode())
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

    await publish(channel, queue_spec, body)
    await publish(channel, queue_spec, body)
    await publish(channel, queue_spec, marker.model_dump_json().encode())
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


def consumed(outcome: str, event_type: str = "other") -> float:
    """How many messages of the test service's this process counted with that outcome."""
    labels = {"service": "testsvc", "event_type": event_type, "outcome": outcome}
    return REGISTRY.get_sample_value("acme_events_consumed_total", labels) or 0.0


async def publish_through_events(channel: AbstractChannel, routing_key: str, body: bytes) -> None:
    exchange = await channel.get_exchange(EXCHANGE)
    await exchange.publish(
        aio_pika.Message(body, content_type="application/json", message_id=str(uuid4())),
        routing_key=routing_key,
    )


NOT_TAKEN = {
    "a type of no event": ("OrderShipped", "other", "no route of"),
    "an event no route takes": ("PaymentFailed", "PaymentFailed", "no route of"),
    "on a routing key not its own": ("OrderPlaced", "OrderPlaced", "came with routing key"),
}


@pytest.mark.parametrize(("event_type", "label", "reason"), NOT_TAKEN.values(), ids=NOT_TAKEN)
async def test_a_message_no_route_takes_is_parked_as_skipped_with_its_reason(
    running: Recorder,
    channel: AbstractChannel,
    queue_spec: QueueSpec,
    event_type: str,
    label: str,
    reason: str,
) -> None:
    skipped_before = consumed("skipped", label)
    body = placed().model_dump_json().replace('"OrderPlaced"', f'"{event_type}"').encode()
    # Through acme.events on the queue's own binding key, which is not OrderPlaced's key.
    await publish_through_events(channel, queue_spec.routing_keys[0], body)
    good = placed()
    await publish(channel, queue_spec, good.model_dump_json().encode())

    parked = await wait_until(
        lambda: dead_letters(channel, queue_spec), what="the skipped message in the DLQ"
    )
    await wait_until(lambda: _async(bool(running.seen)), what="the good message handled")

    assert [m.body for m in parked] == [body]
    why = str((parked[0].headers or {})["x-dead-letter-reason"])
    assert why.startswith("skipped: ")
    assert reason in why
    assert [e.event_id for e in running.seen] == [good.event_id]
    assert consumed("skipped", label) == skipped_before + 1


async def test_a_type_its_routes_ignore_is_acked_unhandled_and_counted(
    settings: Settings, channel: AbstractChannel, queue_spec: QueueSpec
) -> None:
    await declare_queue(channel, queue_spec, settings.quorum_group_size)
    recorder = Recorder()
    consumer = Consumer(
        "testsvc", queue_spec, [Route(OrderPlaced, recorder)], ignores=[PaymentFailed]
    )
    ignored_before = consumed("ignored", "PaymentFailed")
    stop = asyncio.Event()
    task = asyncio.create_task(serve_consumers(settings, stop, "testsvc", [consumer]))
    try:
        await publish(channel, queue_spec, b'{"event_type": "PaymentFailed"}')
        good = placed()
        await publish(channel, queue_spec, good.model_dump_json().encode())
        await wait_until(lambda: _async(bool(recorder.seen)), what="the good message handled")
        queue = await channel.declare_queue(queue_spec.name, passive=True)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    assert [e.event_id for e in recorder.seen] == [good.event_id]
    assert queue.declaration_result.message_count == 0
    assert await dead_letters(channel, queue_spec) == []
    assert consumed("ignored", "PaymentFailed") == ignored_before + 1


@asynccontextmanager
async def dead_letter_queue_refusing(
    env: TestEnvironment, channel: AbstractChannel, spec: QueueSpec
) -> AsyncIterator[None]:
    """While inside, the queue's DLQ is over its length of 0 and refuses every publish (a policy
    on this run's own vhost, for that queue alone): RabbitMQ nacks each dead-letter copy. A quorum
    queue refuses once it is over the limit, so the probe that finds the policy applied leaves a
    message PROBE in the DLQ first; and it takes publishes again only once it is under the limit,
    so lifting the refusal is as an operator would do it: the policy cleared, the DLQ emptied."""
    name = f"refuse-{secrets.token_hex(4)}"
    definition = json.dumps({"max-length": 0, "overflow": "reject-publish"})
    pattern = f"^{re.escape(spec.dead_letter_queue)}$"
    await asyncio.to_thread(
        rabbitmqctl, "set_policy", "-p", env.name, name, pattern, definition, "--apply-to", "queues"
    )
    try:
        await wait_until(
            lambda: _refused(channel, spec.dead_letter_queue), what="the DLQ to refuse publishes"
        )
        yield
    finally:
        await asyncio.to_thread(rabbitmqctl, "clear_policy", "-p", env.name, name)
        # The queue looks at its length again when a message leaves it: only once it has no
        # limit any more, or it would go on refusing.
        await wait_until(
            lambda: _policy_gone(env, spec.dead_letter_queue), what="the policy off the DLQ"
        )
        dlq = await channel.get_queue(spec.dead_letter_queue)
        while (message := await dlq.get(fail=False)) is not None and message.body == PROBE:
            await message.ack()
        if message is not None:
            await message.nack(requeue=True)


PROBE = b"probe"


async def _policy_gone(env: TestEnvironment, queue: str) -> bool:
    listed = await asyncio.to_thread(
        rabbitmqctl, "list_queues", "-p", env.name, "name", "policy", "--no-table-headers"
    )
    return any(line.split() == [queue] for line in listed.splitlines())


async def _refused(channel: AbstractChannel, queue: str) -> bool:
    try:
        await channel.default_exchange.publish(aio_pika.Message(PROBE), routing_key=queue)
    except DeliveryError:
        return True
    return False


async def test_a_message_whose_dead_letter_copy_is_refused_is_given_back_not_lost(
    session_env: TestEnvironment,
    running: Recorder,
    channel: AbstractChannel,
    queue_spec: QueueSpec,
) -> None:
    poison = b"\x00\xffnot json"
    given_back_before = consumed("given_back")
    async with dead_letter_queue_refusing(session_env, channel, queue_spec):
        await publish(channel, queue_spec, poison)
        # A good message behind it, whose batch's ack must not take the poison with it.
        good = placed()
        await publish(channel, queue_spec, good.model_dump_json().encode())
        # Handled after the poison's copy was refused: its ack must not take the poison along.
        await wait_until(lambda: _async(bool(running.seen)), what="the good message handled")

    # The DLQ takes copies again: a later delivery of the message, given back meanwhile, parks it.
    parked = await wait_until(
        lambda: _without_probes(dead_letters(channel, queue_spec)),
        what="the poison message in the DLQ",
    )
    queue = await channel.declare_queue(queue_spec.name, passive=True)

    assert [m.body for m in parked] == [poison]
    headers = parked[0].headers or {}
    assert "body is not JSON" in str(headers["x-dead-letter-reason"])
    assert queue.declaration_result.message_count == 0
    assert [e.event_id for e in running.seen] == [good.event_id]
    # Given back at least once before it was parked (RabbitMQ 3.10's x-delivery-count on the
    # parked copy does not tell: it was seen 0 and 1 after three give-backs).
    assert consumed("given_back") >= given_back_before + 1


async def _without_probes(
    found: Awaitable[list[AbstractIncomingMessage]],
) -> list[AbstractIncomingMessage]:
    return [message for message in await found if message.body != PROBE]


async def test_a_dead_letter_copy_never_confirmed_times_out_and_the_message_is_given_back(
    session_env: TestEnvironment, settings: Settings, pool: asyncpg.Pool, queue_spec: QueueSpec
) -> None:
    """The copy goes out on a connection through a proxy that stalls: the broker never sees it,
    nor does the consumer see a confirm. The message itself was delivered on a direct channel,
    which stays well."""
    proxy = await TcpProxy(BROKER.hostname or "127.0.0.1", BROKER.port or 5672).start()
    credentials = f"{BROKER.username}:{BROKER.password}"
    proxied_url = f"amqp://{credentials}@127.0.0.1:{proxy.port}/{quote(session_env.name, safe='')}"
    direct = await aio_pika.connect(settings.rabbitmq_url)
    proxied = await aio_pika.connect(proxied_url)
    try:
        channel = await direct.channel()
        queue = await declare_queue(channel, queue_spec, settings.quorum_group_size)
        await publish(channel, queue_spec, b"\x00\xffnot json")
        message = await wait_until(lambda: queue.get(fail=False), what="the message delivered")
        runner = ConsumerRunner(
            Consumer("testsvc", queue_spec, [Route(OrderPlaced, Recorder())]),
            pool,
            await declare_dead_letter_exchange(await proxied.channel()),
            asyncio.Event(),
            max_batch=1,
            dead_letter_timeout=0.5,
        )
        proxy.stall()

        # Bounded well above the timeout: without one, the runner would wait here for ever.
        async with asyncio.timeout(10):
            await runner.process([message])

        back = await wait_until(lambda: queue.get(fail=False), what="the message given back")
        assert back.body == message.body
        assert back.redelivered
        await back.ack()
        # The copy never reached the broker; it dies with the proxy's connections.
        await proxy.cut()
        assert await dead_letters(channel, queue_spec) == []
    finally:
        await proxy.stop()
        # Bounded: a connection whose proxy vanished may wait for a close-ok that never comes.
        for connection in (proxied, direct):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 10)


async def test_a_dead_letter_copy_no_queue_takes_is_not_a_copy_and_the_message_is_given_back(
    settings: Settings, pool: asyncpg.Pool, channel: AbstractChannel, queue_spec: QueueSpec
) -> None:
    """Its DLQ deleted, the queue's copies are returned unroutable: the broker confirms a returned
    message too, so the confirm alone does not make a copy."""
    queue = await declare_queue(channel, queue_spec, settings.quorum_group_size)
    await channel.queue_delete(queue_spec.dead_letter_queue)
    await publish(channel, queue_spec, b"\x00\xffnot json")
    message = await wait_until(lambda: queue.get(fail=False), what="the message delivered")
    runner = ConsumerRunner(
        Consumer("testsvc", queue_spec, [Route(OrderPlaced, Recorder())]),
        pool,
        await declare_dead_letter_exchange(channel),
        asyncio.Event(),
        max_batch=1,
    )
    given_back_before = consumed("given_back")

    await runner.process([message])

    back = await wait_until(lambda: queue.get(fail=False), what="the message given back")
    assert back.body == message.body
    assert consumed("given_back") == given_back_before + 1
    await back.ack()
