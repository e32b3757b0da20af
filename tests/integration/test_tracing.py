"""One trace per order, across the outbox and the broker: the API's server span, the publisher's
producer span for each event, each consumer's span for it. In-process, against the real
PostgreSQL and RabbitMQ, with the spans kept in memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from acme_orders.core.consumer import Consumer, ConsumerRunner, Route
from acme_orders.core.events import OrderPlaced
from acme_orders.core.messaging import declare_dead_letter_exchange, declare_exchange
from acme_orders.core.observability import tracing
from acme_orders.core.topology import INVENTORY_ORDER_PLACED
from acme_orders.inventory.stock import reserve_stock
from acme_orders.publisher.relay import relay_outbox_batch
from tests.support.api import api_client, one_line_order
from tests.support.environment import TestEnvironment
from tests.support.waiting import wait_until

# The caller's trace context: the API's span must continue it.
CALLER_TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{CALLER_TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01"
ORDER = one_line_order()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, for this test only, into memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()


@pytest.fixture
async def api(fresh_env: TestEnvironment) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(
        fresh_env.settings(auth_disabled=True, rate_limit_orders_per_second=0)
    ) as client:
        yield client


async def next_message(channel: AbstractChannel, queue_name: str) -> AbstractIncomingMessage:
    queue = await channel.get_queue(queue_name)
    message: AbstractIncomingMessage = await wait_until(
        lambda: queue.get(no_ack=False, fail=False), what=f"a message on {queue_name}"
    )
    return message


def one(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [span for span in spans.get_finished_spans() if span.name == name]
    assert len(found) == 1, [span.name for span in spans.get_finished_spans()]
    return found[0]


def parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    value: int = span.context.span_id
    return value


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    value: int = span.context.trace_id
    return value


async def trace_context_of(pool: asyncpg.Pool, event_type: str) -> dict[str, Any] | None:
    stored = await pool.fetchval(
        "SELECT trace_context::text FROM event_outbox WHERE event_type = $1", event_type
    )
    return orjson.loads(stored) if stored is not None else None


async def test_an_order_is_one_trace_from_the_api_through_the_publisher_to_the_consumer(
    spans: InMemorySpanExporter,
    api: httpx.AsyncClient,
    fresh_pool: asyncpg.Pool,
    fresh_channel: AbstractChannel,
) -> None:
    response = await api.post("/orders", json=ORDER, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 201, response.text

    server = one(spans, "POST /orders")
    assert server.kind is SpanKind.SERVER
    assert (trace_id(server), parent_of(server)) == (CALLER_TRACE_ID, CALLER_SPAN_ID)
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 201
    stored = await trace_context_of(fresh_pool, "OrderPlaced")
    assert stored is not None
    assert stored["traceparent"].split("-")[2] == f"{span_id(server):016x}"

    exchange = await declare_exchange(fresh_channel)
    assert await relay_outbox_batch(fresh_pool, exchange, limit=100) == 1

    published = one(spans, "publish order.placed")
    assert published.kind is SpanKind.PRODUCER
    assert parent_of(published) == span_id(server)
    message = await next_message(fresh_channel, INVENTORY_ORDER_PLACED.name)
    traceparent = (message.headers or {})["traceparent"]
    assert isinstance(traceparent, str)
    assert traceparent.split("-")[2] == f"{span_id(published):016x}"

    runner = ConsumerRunner(
        Consumer("inventory", INVENTORY_ORDER_PLACED, [Route(OrderPlaced, reserve_stock)]),
        fresh_pool,
        await declare_dead_letter_exchange(fresh_channel),
        asyncio.Event(),
        max_batch=32,
    )
    await runner.process([message])

    handled = one(spans, f"process {INVENTORY_ORDER_PLACED.name}")
    assert handled.kind is SpanKind.CONSUMER
    assert parent_of(handled) == span_id(published)
    assert handled.attributes is not None
    assert handled.attributes["acme.order_id"] == response.json()["id"]
    # The event inventory emitted continues the trace from the consumer's span.
    assert await relay_outbox_batch(fresh_pool, exchange, limit=100) == 1
    assert parent_of(one(spans, "publish inventory.reserved")) == span_id(handled)
    assert {trace_id(span) for span in spans.get_finished_spans()} == {CALLER_TRACE_ID}


async def test_without_tracing_nothing_is_stored_or_sent_for_it(
    api: httpx.AsyncClient, fresh_pool: asyncpg.Pool, fresh_channel: AbstractChannel
) -> None:
    assert not tracing.is_enabled()

    response = await api.post("/orders", json=ORDER, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 201, response.text
    exchange = await declare_exchange(fresh_channel)
    assert await relay_outbox_batch(fresh_pool, exchange, limit=100) == 1
    message = await next_message(fresh_channel, INVENTORY_ORDER_PLACED.name)
    await message.ack()

    assert await trace_context_of(fresh_pool, "OrderPlaced") is None
    assert not {"traceparent", "tracestate"} & set(message.headers or {})
    assert message.message_id is not None
    assert UUID(message.message_id)


async def test_a_stored_trace_context_passes_through_a_publisher_that_does_not_trace(
    fresh_pool: asyncpg.Pool, fresh_channel: AbstractChannel
) -> None:
    stored = {"traceparent": TRACEPARENT}
    await fresh_pool.execute(
        """
        INSERT INTO event_outbox (event_id, event_type, routing_key, payload, trace_context)
        VALUES (gen_random_uuid(), 'TestHappened', 'test.traced', '{}'::jsonb, $1::jsonb)
        """,
        orjson.dumps(stored).decode(),
    )
    queue = await fresh_channel.declare_queue(exclusive=True)
    await queue.bind("acme.events", "test.traced")

    exchange = await declare_exchange(fresh_channel)
    assert await relay_outbox_batch(fresh_pool, exchange, limit=100) == 1
    message = await wait_until(lambda: queue.get(no_ack=True, fail=False), what="the message")

    # The consumers' spans then continue the API's trace, one hop shorter.
    assert (message.headers or {}).get("traceparent") == TRACEPARENT
