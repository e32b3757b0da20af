"""RabbitMQ: connections, the exchange and queue topology, and how an event becomes a message."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
)

from acme_orders.events import EXCHANGE
from acme_orders.outbox import OutboxRow
from acme_orders.settings import Settings

logger = logging.getLogger(__name__)

DEAD_LETTER_EXCHANGE = "acme.events.dlx"
# RabbitMQ dead-letters a message after this many deliveries, so a message that crashes its
# consumer cannot come back forever. A consumer that dies holding a message uses one delivery too.
# A queue argument: changing it means re-creating the queues.
DELIVERY_LIMIT = 10
# Seconds between attempts to reconnect to RabbitMQ.
RECONNECT_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A durable consumer queue bound to `acme.events`, with its dead-letter queue `<name>.dlq`."""

    name: str
    routing_keys: tuple[str, ...]

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dlq"


async def connect(settings: Settings, name: str) -> AbstractRobustConnection:
    """A connection that reconnects by itself and restores its channels, queues and consumers.

    aio-pika retries at a fixed interval; its default of 5 s would leave orders waiting after a
    blip, so ours is shorter unless RABBITMQ_URL sets ``?reconnect_interval=N`` itself."""
    in_url = "reconnect_interval" in parse_qs(urlsplit(settings.rabbitmq_url).query)
    return await aio_pika.connect_robust(
        settings.rabbitmq_url,
        client_properties={"connection_name": f"acme-orders {name}"},
        # aio-pika ignores a None keyword, and then reads the URL's.
        reconnect_interval=None if in_url else RECONNECT_INTERVAL,
    )


async def declare_exchange(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)


async def declare_dead_letter_exchange(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )


async def declare_queue(channel: AbstractChannel, spec: QueueSpec) -> AbstractQueue:
    """Declare the queue, its bindings and its dead-letter queue; safe to repeat.

    Quorum queues, so that RabbitMQ itself counts deliveries and dead-letters a message that was
    delivered DELIVERY_LIMIT times, whatever happened to the consumers that got it."""
    exchange = await declare_exchange(channel)
    dead_letters = await declare_dead_letter_exchange(channel)
    dlq = await channel.declare_queue(
        spec.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dlq.bind(dead_letters, routing_key=spec.name)
    queue = await channel.declare_queue(
        spec.name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": spec.name,
        },
    )
    for routing_key in spec.routing_keys:
        await queue.bind(exchange, routing_key=routing_key)
    return queue


async def declare_topology(settings: Settings, queues: list[QueueSpec]) -> None:
    """Declare the exchanges and the given queues, so that events published before a consumer
    first starts wait in its queue instead of being dropped as unroutable."""
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        await declare_exchange(channel)
        for spec in queues:
            await declare_queue(channel, spec)
            logger.info("declared queue %s -> %s", spec.name, ", ".join(spec.routing_keys))


def outbox_message(
    row: OutboxRow, trace_headers: Mapping[str, str] | None = None
) -> aio_pika.Message:
    """The message of an outbox row; `trace_headers` (traceparent, tracestate) carry the trace on
    to the consumers."""
    return aio_pika.Message(
        body=row.payload,
        headers=dict(trace_headers) if trace_headers else None,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(row.event_id),
        type=row.event_type,
        app_id="acme-orders",
    )
