"""RabbitMQ: connections, the exchange and queue topology, and how an event becomes a message.

RABBITMQ_URL may name several nodes of a cluster, as a comma-separated list of AMQP URLs: a
service connects to the first that answers and, when that connection drops, reconnects to the
next one in the list (round the list, every RECONNECT_INTERVAL), restoring its channels and
consumers there. One URL (a single broker, or a load balancer in front of a cluster) works as
before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    HeadersType,
)
from aio_pika.exceptions import ChannelNotFoundEntity, ChannelPreconditionFailed
from pamqp.commands import Basic
from yarl import URL

from acme_orders.core.events import EXCHANGE
from acme_orders.core.outbox import OutboxRow
from acme_orders.core.retries import RETRY_EXCHANGE, RetryPolicy, retry_queue_name
from acme_orders.core.settings import MAX_ATTEMPTS_LIMIT, Settings
from acme_orders.core.topology import QueueSpec

logger = logging.getLogger(__name__)

DEAD_LETTER_EXCHANGE = "acme.events.dlx"
# RabbitMQ dead-letters a message after this many deliveries, so a message that crashes its
# consumer cannot come back forever. A consumer that dies holding a message uses one delivery too.
# A queue argument: changing it means re-creating the queues.
DELIVERY_LIMIT = 10
# Seconds between attempts to reconnect to RabbitMQ.
RECONNECT_INTERVAL = 1.0
# Seconds one node may take to accept a connection before the next one is tried.
CONNECT_TIMEOUT = 5.0


class MultiNodeConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, which reconnects to the next node of a list each time it
    (re)connects, instead of to the same one forever: after a node dies its clients move to the
    others, and a node that is down is only tried again once the others were.

    aio-pika has no hook for this; its reconnect loop calls `__connect_transport` for every
    attempt, which this class extends (name-mangled, so spelled out): it points `url`, which the
    attempt reads, at the next node first. aio-pika is pinned, and the tests of this class would
    catch a change of that loop."""

    def __init__(self, nodes: Sequence[str], **kwargs: Any) -> None:
        super().__init__(URL(nodes[0]), **kwargs)
        self._nodes = [URL(node) for node in nodes]
        self._next = 0

    async def _RobustConnection__connect_transport(self) -> None:  # noqa: N802 (aio-pika's name)
        self.url = self._nodes[self._next % len(self._nodes)]
        self._next += 1
        await super()._RobustConnection__connect_transport()  # type: ignore[misc]


def _reconnect_interval(url: str) -> float | None:
    # aio-pika retries at a fixed interval; its default of 5 s would leave orders waiting after a
    # blip, so ours is shorter unless the URL sets ``?reconnect_interval=N`` itself (aio-pika
    # ignores a None keyword, and then reads the URL's).
    return None if "reconnect_interval" in parse_qs(urlsplit(url).query) else RECONNECT_INTERVAL


async def connect(settings: Settings, name: str) -> MultiNodeConnection:
    """A connection that reconnects by itself, to the next node of RABBITMQ_URL, and restores its
    channels, queues and consumers there. Connects to the first node that answers; raises what
    the last one raised when none does."""
    nodes = settings.rabbitmq_nodes
    failure: Exception | None = None
    for first in range(len(nodes)):
        connection = MultiNodeConnection(
            nodes[first:] + nodes[:first],
            client_properties={"connection_name": f"acme-orders {name}"},
            reconnect_interval=_reconnect_interval(nodes[first]),
        )
        try:
            await connection.connect(timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            # Broad on purpose: a node that is down, starting, or refusing us all mean "try the
            # next one".
            failure = exc
            await connection.close()
            logger.warning("RabbitMQ node %s not reachable (%r)", connection, exc)
            continue
        return connection
    assert failure is not None
    raise failure


async def connect_once(settings: Settings, name: str) -> AbstractConnection:
    """A plain connection, for a one-shot job or a look: to the first node of RABBITMQ_URL that
    answers. It does not reconnect: what it was doing fails, and the caller decides."""
    failure: Exception | None = None
    for node in settings.rabbitmq_nodes:
        try:
            return await aio_pika.connect(
                node,
                timeout=CONNECT_TIMEOUT,
                client_properties={"connection_name": f"acme-orders {name}"},
            )
        except Exception as exc:
            failure = exc
    assert failure is not None
    raise failure


async def declare_exchange(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)


async def declare_dead_letter_exchange(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )


async def declare_quorum_queue(
    channel: AbstractChannel, name: str, arguments: dict[str, Any], group_size: int
) -> AbstractQueue:
    """A durable quorum queue of `group_size` members (as many as the cluster has, if fewer).

    The group size only counts when the queue is created, and RabbitMQ refuses a declare whose
    size differs from the queue's (one made before the setting, or with another value): such a
    queue is taken as it is (a passive declare), keeps the members it has, and the log says so
    (RabbitMQ's `rabbitmq-queues grow`/`shrink` change them)."""
    arguments = {"x-queue-type": "quorum", **arguments}
    try:
        return await channel.declare_queue(
            name,
            durable=True,
            arguments={**arguments, "x-quorum-initial-group-size": group_size},
        )
    except ChannelPreconditionFailed as exc:
        if "x-quorum-initial-group-size" not in str(exc):
            raise
        logger.info("queue %s exists with another group size; it keeps its members (%s)", name, exc)
    # The refusal closed the channel.
    await channel.reopen()
    return await channel.declare_queue(name, passive=True)


async def declare_queue(
    channel: AbstractChannel, spec: QueueSpec, group_size: int
) -> AbstractQueue:
    """Declare the queue, its bindings and its dead-letter queue, and remove the bindings it no
    longer has (its retired keys); safe to repeat.

    Quorum queues, so that RabbitMQ itself counts deliveries and dead-letters a message that was
    delivered DELIVERY_LIMIT times, whatever happened to the consumers that got it, and so that a
    cluster keeps them, and every message they have confirmed, while a majority of their
    `group_size` members is up."""
    exchange = await declare_exchange(channel)
    dead_letters = await declare_dead_letter_exchange(channel)
    dlq = await declare_quorum_queue(channel, spec.dead_letter_queue, {}, group_size)
    await dlq.bind(dead_letters, routing_key=spec.name)
    queue = await declare_quorum_queue(
        channel,
        spec.name,
        {
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": spec.name,
        },
        group_size,
    )
    for routing_key in spec.routing_keys:
        await queue.bind(exchange, routing_key=routing_key)
    # RabbitMQ answers an unbind of a binding that is not there with unbind-ok, so this is safe
    # on a queue made by this release as on one an earlier release bound with these keys.
    for routing_key in spec.retired_keys:
        await queue.unbind(exchange, routing_key=routing_key)
    return queue


async def declare_retry_exchange(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(RETRY_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)


async def declare_retry_queues(
    channel: AbstractChannel, queue: AbstractQueue, policy: RetryPolicy, group_size: int
) -> AbstractExchange:
    """Declare the retry queues of a work queue (see core/retries.py), one per attempt that is
    followed by a wait, and the way back: each retry queue dead-letters what expires in it to
    `acme.events.retry` with the work queue's name, to which the work queue is bound. Returns
    the exchange to publish a retry to, with the retry queue's name as routing key; safe to
    repeat.

    Quorum queues, like the work queues, so that a message waiting for its next attempt survives
    the loss of a node; their dead-lettering is at-least-once (which RabbitMQ allows only with
    reject-publish), so that a copy on its way back is never dropped."""
    exchange = await declare_retry_exchange(channel)
    await queue.bind(exchange, routing_key=queue.name)
    for attempt in policy.waits:
        name = retry_queue_name(queue.name, attempt)
        retry_queue = await declare_quorum_queue(
            channel,
            name,
            {
                "x-dead-letter-exchange": RETRY_EXCHANGE,
                "x-dead-letter-routing-key": queue.name,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
            group_size,
        )
        await retry_queue.bind(exchange, routing_key=name)
    return exchange


async def remove_unused_retry_queues(
    channel: AbstractChannel, queue: str, policy: RetryPolicy
) -> None:
    """Delete the retry queues of `queue` that MAX_ATTEMPTS no longer uses, each once it is empty.
    One that still holds messages is left (they expire back into the work queue, for attempts
    the settings still allow or to be parked), and the log says so; a later migrate deletes it.

    Quorum queues cannot be deleted "if empty"; instead each is unbound first, so that nothing
    can arrive in it once it was found empty (a consumer still running with the old settings
    gets its copy back, unroutable, and requeues the message in place)."""
    for attempt in range(policy.max_attempts, MAX_ATTEMPTS_LIMIT):
        name = retry_queue_name(queue, attempt)
        try:
            unused = await channel.declare_queue(name, passive=True)
        except ChannelNotFoundEntity:
            # The refusal closed the channel.
            await channel.reopen()
            continue
        await unused.unbind(RETRY_EXCHANGE, routing_key=name)
        left = (await channel.declare_queue(name, passive=True)).declaration_result.message_count
        if left:
            logger.warning(
                "retry queue %s is no longer used (MAX_ATTEMPTS=%d) but holds %d message(s): "
                "left to drain into %s; a later migrate deletes it",
                name,
                policy.max_attempts,
                left,
                queue,
            )
            continue
        await unused.delete(if_unused=False, if_empty=False)
        logger.info("deleted retry queue %s (MAX_ATTEMPTS=%d)", name, policy.max_attempts)


async def declare_topology(settings: Settings, queues: Sequence[QueueSpec]) -> None:
    """Declare the exchanges and the given queues, so that events published before a consumer
    first starts wait in its queue instead of being dropped as unroutable, with the retry queues
    the retry settings call for, and delete those they no longer call for."""
    policy = RetryPolicy.from_settings(settings)
    connection = await connect_once(settings, "migrate")
    async with connection:
        channel = await connection.channel()
        await declare_exchange(channel)
        for spec in queues:
            queue = await declare_queue(channel, spec, settings.quorum_group_size)
            await declare_retry_queues(channel, queue, policy, settings.quorum_group_size)
            await remove_unused_retry_queues(channel, spec.name, policy)
            logger.info(
                "declared queue %s -> %s, with %d retry queue(s)",
                spec.name,
                ", ".join(spec.routing_keys),
                len(policy.waits),
            )


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


# What RabbitMQ writes on a message when it dead-letters it (x-death and its summaries) and when a
# quorum queue delivers it again (x-delivery-count): the story of the original, never carried to
# a copy that starts its own.
RABBITMQ_DEATH_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-delivery-count",
    }
)


def persistent_copy(
    message: AbstractIncomingMessage, headers: HeadersType, *, expiration: float | None = None
) -> aio_pika.Message:
    """The message to publish again elsewhere (to a retry queue, to a dead-letter queue, back from
    one): its body and properties, these headers instead of its own, and persistent whatever it
    was, since a copy stands in for a message that is then acked."""
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        type=message.type,
        app_id=message.app_id,
        timestamp=message.timestamp,
        priority=message.priority,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        expiration=expiration,
    )


class CopyNotConfirmedError(Exception):
    """The broker did not ack a copy: it returned it unroutable, or nacked it."""


async def publish_confirmed(
    exchange: AbstractExchange,
    message: aio_pika.Message,
    routing_key: str,
) -> None:
    """Publish, mandatory, on a channel with confirms; returns only once the broker acked it,
    else raises (CopyNotConfirmedError, or the publish's own error)."""
    confirmation = await exchange.publish(message, routing_key=routing_key, mandatory=True)
    if not isinstance(confirmation, Basic.Ack):
        raise CopyNotConfirmedError(f"the broker answered {confirmation!r}")
