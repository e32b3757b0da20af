"""An analytics counter: a new service added by binding a queue to `acme.events`, touching
nothing else in the system.

It subscribes to every event ("#"), counts them by type, and logs one line per event, so one
grep of an order id shows that order's whole story. Run it beside the five services:

    python examples/analytics_counter.py

It reuses the core for what every consumer needs (its own durable quorum queue with a
dead-letter queue, reconnecting connection, SIGTERM handling), and nothing of the other services.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import orjson
from aio_pika.abc import AbstractIncomingMessage

from acme_orders.core.events import EVENT_TYPE_BY_NAME
from acme_orders.core.messaging import connect, declare_queue
from acme_orders.core.runtime import retry_until_ready, run_service
from acme_orders.core.settings import Settings
from acme_orders.core.topology import QueueSpec

logger = logging.getLogger("analytics")

SERVICE = "analytics"
ALL_EVENTS_QUEUE = QueueSpec("analytics.all-events", ("#",))


class EventCounter:
    def __init__(self) -> None:
        self.by_type: Counter[str] = Counter()
        # Redeliveries carry the same event_id; count each event once.
        self.seen: set[str] = set()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        async with message.process(requeue=True):
            event = orjson.loads(message.body)
            event_type = event.get("event_type", "?")
            if event_type in EVENT_TYPE_BY_NAME:
                # Validate known events against their contract; unknown ones are still counted.
                EVENT_TYPE_BY_NAME[event_type].model_validate(event)
            if message.message_id in self.seen:
                return
            self.seen.add(message.message_id or "")
            self.by_type[event_type] += 1
            logger.info(
                "EVENT %s %s order=%s event=%s (total %s: %d)",
                message.routing_key,
                event_type,
                event.get("order_id"),
                event.get("event_id"),
                event_type,
                self.by_type[event_type],
            )


async def main(settings: Settings, stop: asyncio.Event) -> None:
    connection = await retry_until_ready(lambda: connect(settings, SERVICE), "RabbitMQ", stop)
    if connection is None:
        return
    counter = EventCounter()
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=settings.prefetch_count)
        queue = await declare_queue(channel, ALL_EVENTS_QUEUE, settings.quorum_group_size)
        await queue.consume(counter.on_message)
        logger.info("ready: consuming %s", ALL_EVENTS_QUEUE.name)
        await stop.wait()
    logger.info("counted %s", dict(counter.by_type))


if __name__ == "__main__":
    run_service(SERVICE, main)
