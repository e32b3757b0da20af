"""The idempotent consumer, written once around every handler.

For each message: decode and validate it against its event model; in one database transaction,
record (service, event_id) in processed_events, run the handler and write the events it returns
to the outbox; commit; then ack. A redelivered event finds its row in processed_events and changes
nothing. A message that can never succeed goes to the queue's dead-letter queue with the reason; a
handler that fails otherwise is retried (nack and requeue, after a pause), and RabbitMQ dead-letters
the message once it has been delivered DELIVERY_LIMIT times.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import aio_pika
import asyncpg
import orjson
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractQueue
from pydantic import ValidationError

from acme_orders.database import Connection
from acme_orders.events import Event
from acme_orders.messaging import QueueSpec, declare_dead_letter_exchange, declare_queue
from acme_orders.orders import UnprocessableEventError
from acme_orders.outbox import add_to_outbox
from acme_orders.runtime import open_connections, wait_or_stop
from acme_orders.settings import Settings

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)

RETRY_PAUSE_MAX = 5.0

# Errors that say nothing about the message: the database is away, restarting, or chose this
# transaction as a deadlock or serialization victim. The message is retried in place, unacked,
# so an outage does not use up its deliveries and send good orders to the dead-letter queue.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)


@dataclass(frozen=True, slots=True)
class Route(Generic[E]):
    """One event type a consumer handles, and the handler that does it."""

    event_type: type[E]
    handler: Callable[[E, Connection], Awaitable[Sequence[Event]]]


@dataclass(frozen=True, slots=True)
class Consumer:
    """A service's subscription: the queue it reads and a handler per event type in it."""

    service: str
    queue: QueueSpec
    routes: Sequence[Route[Any]]
    by_type: dict[str, Route[Any]] = field(init=False)

    def __post_init__(self) -> None:
        mapping = {r.event_type.model_fields["event_type"].default: r for r in self.routes}
        object.__setattr__(self, "by_type", mapping)


def _validation_summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
    )


class ConsumerRunner:
    """Runs one Consumer on a channel, tracking in-flight messages for a graceful stop."""

    def __init__(
        self,
        consumer: Consumer,
        pool: asyncpg.Pool,
        dead_letters: AbstractExchange,
        stop: asyncio.Event,
    ) -> None:
        self.consumer = consumer
        self.pool = pool
        self.dead_letters = dead_letters
        self.stop = stop
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.in_flight += 1
        self.idle.clear()
        try:
            await self.process(message)
        except Exception:
            # Typically the broker went away between commit and ack (or while parking a dead
            # letter). The message is unacked, so RabbitMQ delivers it again once we are back,
            # and processed_events turns that delivery into a no-op.
            logger.warning(
                "could not settle message %s on %s; it will be redelivered",
                message.message_id,
                self.consumer.queue.name,
                exc_info=True,
            )
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    async def process(self, message: AbstractIncomingMessage) -> None:
        try:
            raw = orjson.loads(message.body)
        except orjson.JSONDecodeError as exc:
            await self.dead_letter(message, f"body is not JSON: {exc}")
            return
        if not isinstance(raw, dict) or not isinstance(raw.get("event_type"), str):
            await self.dead_letter(message, "body is not an event: no event_type")
            return
        route = self.consumer.by_type.get(raw["event_type"])
        if route is None:
            # A wildcard binding can bring event types this service has no use for.
            logger.debug("ignoring %s on %s", raw["event_type"], self.consumer.queue.name)
            await message.ack()
            return
        try:
            event = route.event_type.model_validate(raw)
        except ValidationError as exc:
            await self.dead_letter(
                message, f"invalid {raw['event_type']}: {_validation_summary(exc)}"
            )
            return

        pause = 0.1
        while True:
            try:
                first_time = await self.handle_once(route, event)
                break
            except UnprocessableEventError as exc:
                await self.dead_letter(message, str(exc))
                return
            except TRANSIENT_DB_ERRORS as exc:
                logger.warning(
                    "database unavailable handling %s for order %s (%r); retrying in %.1fs",
                    event.event_type,
                    event.order_id,
                    exc,
                    pause,
                )
                if await wait_or_stop(self.stop, pause):
                    # Left unacked: closing the channel hands the message back to the queue.
                    return
                pause = min(pause * 2, RETRY_PAUSE_MAX)
            except Exception as exc:
                await self.retry_later(message, event, exc)
                return

        if not first_time:
            logger.info(
                "duplicate %s %s for order %s ignored",
                event.event_type,
                event.event_id,
                event.order_id,
            )
        # Ack only now that the transaction has committed: a crash before this line redelivers
        # the message, and processed_events turns the redelivery into a no-op.
        await message.ack()

    async def handle_once(self, route: Route[Any], event: Event) -> bool:
        """Handle the event in one transaction; False when this service had already handled it."""
        async with self.pool.acquire() as conn, conn.transaction():
            first_time = await conn.fetchval(
                """
                INSERT INTO processed_events (service, event_id) VALUES ($1, $2)
                ON CONFLICT DO NOTHING
                RETURNING true
                """,
                self.consumer.service,
                event.event_id,
            )
            if first_time:
                await add_to_outbox(conn, await route.handler(event, conn))
        return bool(first_time)

    async def retry_later(
        self, message: AbstractIncomingMessage, event: Event, error: Exception
    ) -> None:
        # Quorum queues count earlier deliveries in this header.
        count = (message.headers or {}).get("x-delivery-count")
        deliveries = count if isinstance(count, int) else 0
        logger.error(
            "handling %s %s for order %s failed (delivery %d); will retry",
            event.event_type,
            event.event_id,
            event.order_id,
            deliveries + 1,
            exc_info=error,
        )
        # A pause before the requeue keeps a failing handler out of a hot loop, while the other
        # prefetched messages go on being handled.
        await asyncio.sleep(min(0.2 * 2**deliveries, RETRY_PAUSE_MAX))
        await message.nack(requeue=True)

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Park the message in the queue's dead-letter queue with the reason, then ack it. The copy
        is confirmed by the broker before the original is acked, so it cannot be lost between."""
        queue = self.consumer.queue
        headers = dict(message.headers or {})
        headers.update(
            {
                "x-dead-letter-reason": reason[:2000],
                "x-dead-letter-queue": queue.name,
                "x-dead-lettered-at": datetime.now(UTC).isoformat(),
            }
        )
        await self.dead_letters.publish(
            aio_pika.Message(
                body=message.body,
                headers=headers,
                content_type=message.content_type,
                message_id=message.message_id,
                type=message.type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=queue.name,
        )
        await message.ack()
        logger.warning(
            "DEAD-LETTERED message %s from %s to %s: %s",
            message.message_id,
            queue.name,
            queue.dead_letter_queue,
            reason,
        )


async def serve_consumers(
    settings: Settings, stop: asyncio.Event, service: str, consumers: Sequence[Consumer]
) -> None:
    """Run a consumer service until `stop` is set, then stop taking messages, let the ones in
    flight finish (up to SHUTDOWN_TIMEOUT) and close the connections."""
    async with open_connections(settings, stop, service) as connections:
        if connections is None:
            return
        channel = await connections.broker.channel()
        await channel.set_qos(prefetch_count=settings.prefetch_count)
        dead_letters = await declare_dead_letter_exchange(channel)
        runners: list[tuple[ConsumerRunner, AbstractQueue, str]] = []
        for consumer in consumers:
            queue = await declare_queue(channel, consumer.queue)
            runner = ConsumerRunner(consumer, connections.pool, dead_letters, stop)
            tag = await queue.consume(runner.on_message)
            runners.append((runner, queue, tag))
        logger.info("ready: consuming %s", ", ".join(c.queue.name for c in consumers))

        await stop.wait()
        try:
            # Bounded as a whole: cancelling a consumer waits for the broker, which may be away.
            async with asyncio.timeout(settings.shutdown_timeout):
                for _, queue, tag in runners:
                    await queue.cancel(tag)
                await asyncio.gather(*(runner.idle.wait() for runner, _, _ in runners))
        except TimeoutError:
            logger.warning(
                "in-flight messages did not finish within %.0fs; RabbitMQ will redeliver them",
                settings.shutdown_timeout,
            )
