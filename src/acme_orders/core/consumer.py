"""The idempotent consumer, written once around every handler.

Messages are handled in micro-batches: whatever the consumer has received (up to its prefetch)
while the previous batch was being handled. For a batch: decode and validate each message against
its event model; in one database transaction, record each (service, event_id) in
processed_events, run the handlers on the events seen for the first time and write the events
they return to the outbox; commit; then ack each message. A redelivered event finds its row in
processed_events and changes nothing. A message that can never succeed goes to the queue's
dead-letter queue with the reason; a handler that fails otherwise is retried later: the message
waits in a retry queue of RabbitMQ, longer after each attempt, and is parked in the dead-letter
queue with the last error after MAX_ATTEMPTS (see core/retries.py). RabbitMQ dead-letters a message
delivered DELIVERY_LIMIT times, which guards against one that crashes its consumer. When a batch
fails, its messages are handled again one at a time, so only the message at fault is
dead-lettered or retried.

A message is acked only once it was handled or a copy of it was confirmed: when a dead-letter copy
is refused, unroutable or not confirmed within DEAD_LETTER_TIMEOUT, the message is given back to
its queue (after a pause) instead. A message of a type the queue's routes do not take (the queue
is bound to exactly their routing keys, so a producer's bug) is parked in the DLQ too, its reason
starting with "skipped:"; a type a service means to ignore is named in its Consumer's `ignores`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

import asyncpg
import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from pydantic import ValidationError

from acme_orders.core.database import Connection, is_transient
from acme_orders.core.events import EXCHANGE, Event, caused_by
from acme_orders.core.messaging import (
    RABBITMQ_DEATH_HEADERS,
    declare_dead_letter_exchange,
    declare_queue,
    declare_retry_queues,
    persistent_copy,
    publish_confirmed,
)
from acme_orders.core.observability import tracing
from acme_orders.core.observability.logs import event_log_context
from acme_orders.core.observability.metrics import ConsumerMetrics, Outcome, event_type_label
from acme_orders.core.orders import UnprocessableEventError
from acme_orders.core.outbox import add_to_outbox
from acme_orders.core.retries import (
    ATTEMPT_HEADER,
    LAST_ERROR_HEADER,
    RetryPolicy,
    attempt_of,
    error_text,
    expiration_ms,
    retry_queue_name,
)
from acme_orders.core.runtime import open_connections, wait_any, wait_or_stop
from acme_orders.core.settings import Settings
from acme_orders.core.topology import QueueSpec

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)

# The longest wait between two attempts at a batch while the database is away: short, so that
# orders move again within a second of its return (a failover takes a few seconds).
RETRY_PAUSE_MAX = 1.0

# Seconds the broker may take to confirm a retry's copy before it counts as refused.
RETRY_CONFIRM_TIMEOUT = 10.0

# Seconds before a message whose dead-letter copy failed is given back: doubling with the
# message's deliveries, from DEAD_LETTER_PAUSE_FIRST up to DEAD_LETTER_PAUSE_MAX. The batch waits
# meanwhile (a DLQ that refuses copies is the broker's trouble, and more messages would only fail
# the same way), and the pause keeps the message from using up its DELIVERY_LIMIT deliveries in a
# moment: at the limit RabbitMQ dead-letters it itself, and drops it if the DLQ still refuses.
DEAD_LETTER_PAUSE_FIRST = 0.25
DEAD_LETTER_PAUSE_MAX = 5.0

# The idempotency guard: each (service, event) once; the ones returned are new to the service.
# received_at: when the runner took the batch, $3 seconds ago by its monotonic clock, set on the
# database's clock (as every other time of the timeline is), so that no two machines' clocks are
# compared. In the same statement: it costs the batch nothing more.
RECORD_PROCESSED = """
INSERT INTO processed_events (service, event_id, received_at)
SELECT $1, unnest($2::uuid[]), clock_timestamp() - make_interval(secs => $3::float8)
ON CONFLICT DO NOTHING
RETURNING event_id
"""

Handler = Callable[[Sequence[E], Connection], Awaitable[Sequence[Event]]]


class DependencyUnavailableError(Exception):
    """Raised by a handler when something outside it does not answer (a card gateway): like a
    database outage, nothing is wrong with the messages, so the batch is retried in place,
    unacked, however long that lasts, and the outage never uses up their deliveries."""


def earlier_deliveries(message: AbstractIncomingMessage) -> int:
    """How often the message was delivered before, as a quorum queue counts in its header."""
    count = (message.headers or {}).get("x-delivery-count")
    return count if isinstance(count, int) else 0


@dataclass(frozen=True, slots=True)
class Route(Generic[E]):
    """One event type a consumer handles, and the handler that does it.

    A handler takes the events of a batch, in delivery order, each seen by this service for the
    first time, and the transaction to do its work in; it returns the events to publish. It
    raises UnprocessableEventError for an event that can never succeed. Routes that share a
    handler get the events of all their types in one call."""

    event_type: type[E]
    handler: Handler[E]


@dataclass(frozen=True, slots=True)
class Consumer:
    """A service's subscription: the queue it reads and a handler per event type in it.

    `ignores`: event types the queue receives and the service means not to handle: such a
    message is acked unhandled (counted "ignored"). Every other type with no route is a producer's
    bug, parked in the DLQ ("skipped"). The queue's binding keys are exactly the routing keys of
    the routes and the ignored types (`binding_keys`; tests/unit/test_services.py checks it).

    `linger`: seconds a batch waits, after its first message, for more to arrive (unless it
    fills up first). Each batch costs a transaction, a commit and an ack whatever its size, so a
    consumer whose work is off the order's critical path (an e-mail, a report) can trade a little
    of its own delay for far fewer batches, and leave the CPU to the services an order waits for.
    0: a batch is whatever has arrived, handled at once."""

    service: str
    queue: QueueSpec
    routes: Sequence[Route[Any]]
    linger: float = 0.0
    ignores: Sequence[type[Event]] = ()
    by_type: dict[str, Route[Any]] = field(init=False)
    ignored_types: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        mapping = {r.event_type.model_fields["event_type"].default: r for r in self.routes}
        object.__setattr__(self, "by_type", mapping)
        ignored = frozenset(cls.model_fields["event_type"].default for cls in self.ignores)
        object.__setattr__(self, "ignored_types", ignored)

    def binding_keys(self) -> set[str]:
        """The routing keys the consumer takes: its queue must be bound to exactly these."""
        taken = [route.event_type for route in self.routes] + list(self.ignores)
        return {cls.routing_key for cls in taken}


@dataclass(frozen=True, slots=True)
class RetryQueues:
    """Where a runner sends a failed message to wait for its next attempt: the exchange of its
    queue's retry queues (messaging.declare_retry_queues), and when it waits how long."""

    exchange: AbstractExchange
    policy: RetryPolicy


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message decoded into the event its route handles."""

    message: AbstractIncomingMessage
    route: Route[Any]
    event: Event


def _with_causes(emitted: list[Event], handled: Iterable[Sequence[Event]]) -> list[Event]:
    """The emitted events, each naming the event that caused it. Handlers build them with
    events.caused_by, which carries the correlation id on; one that did not is a bug in its
    handler: say so, and take the handled event of the same order as its cause, so that the
    order's story is not cut off."""
    if all(e.causation_id is not None and e.correlation_id is not None for e in emitted):
        return emitted
    cause_by_order = {event.order_id: event for events in handled for event in events}
    named: list[Event] = []
    for effect in emitted:
        if effect.causation_id is None or effect.correlation_id is None:
            logger.warning(
                "%s %s for order %s was emitted without its cause; its handler should build it "
                "with events.caused_by",
                effect.event_type,
                effect.event_id,
                effect.order_id,
            )
            cause = cause_by_order.get(effect.order_id)
            if cause is not None:
                effect = caused_by(cause, effect)
        named.append(effect)
    return named


def _validation_summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
    )


class ConsumerRunner:
    """Runs one Consumer: takes the messages delivered to it and handles them batch by batch."""

    def __init__(
        self,
        consumer: Consumer,
        pool: asyncpg.Pool,
        dead_letters: AbstractExchange,
        stop: asyncio.Event,
        max_batch: int,
        retries: RetryQueues | None = None,
        dead_letter_timeout: float = 10.0,
        open_channel: Callable[[], Awaitable[AbstractChannel]] | None = None,
    ) -> None:
        self.consumer = consumer
        self.pool = pool
        self.dead_letters = dead_letters
        self.stop = stop
        self.max_batch = max_batch
        # None (a runner built without retry queues): a failed message is requeued in place.
        self.retries = retries
        self.dead_letter_timeout = dead_letter_timeout
        # After a failed copy, the next goes out on a new channel of the runner's own, from
        # `open_channel`: RabbitMQ 3.10 remembers on a channel that a quorum DLQ refused it (over
        # its max-length) and goes on refusing there once the DLQ has room again, while a new
        # channel is answered afresh.
        self.open_channel = open_channel
        self.dead_letter_channel: AbstractChannel | None = None
        self.dead_letters_failed = False
        # Every message put here is marked done once it is settled or given back, so join()
        # tells when nothing is in flight.
        self.inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        # Set when the inbox holds the rest of a full batch, which ends a linger early.
        self.batch_ready = asyncio.Event()
        self.requeues: set[asyncio.Task[None]] = set()
        self.gave_back = False
        self.metrics = ConsumerMetrics(consumer.service, consumer.queue.name, consumer.by_type)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.inbox.put_nowait(message)
        if self.inbox_fills_batch():
            self.batch_ready.set()

    async def run(self) -> None:
        """Handle batches until cancelled."""
        while True:
            batch = [await self.inbox.get()]
            taken_at = time.monotonic()
            await self.linger()
            while len(batch) < self.max_batch and not self.inbox.empty():
                batch.append(self.inbox.get_nowait())
            try:
                await self.process(batch, taken_at)
            except Exception:
                # Typically the broker went away between commit and ack (or while parking a dead
                # letter). The messages are unacked, so RabbitMQ delivers them again once we are
                # back, and processed_events turns that delivery into a no-op.
                logger.warning(
                    "could not settle %d message(s) on %s; they will be redelivered",
                    len(batch),
                    self.consumer.queue.name,
                    exc_info=True,
                )
            finally:
                for _ in batch:
                    self.inbox.task_done()

    async def linger(self) -> None:
        """With a batch begun, wait up to the consumer's linger for the rest of it: until the
        inbox holds enough to fill it, or a stop."""
        if not self.consumer.linger or self.stop.is_set():
            return
        self.batch_ready.clear()
        if not self.inbox_fills_batch():
            await wait_any(self.batch_ready, self.stop, within=self.consumer.linger)

    def inbox_fills_batch(self) -> bool:
        # A batch's first message is taken out of the inbox before it lingers.
        return self.inbox.qsize() >= self.max_batch - 1

    async def drained(self) -> None:
        """Wait until every message received so far is settled or given back."""
        await self.inbox.join()
        while self.requeues:
            await asyncio.gather(*self.requeues, return_exceptions=True)

    async def process(
        self, batch: Sequence[AbstractIncomingMessage], taken_at: float | None = None
    ) -> None:
        """Handle a batch taken from the inbox at `taken_at` (time.monotonic(); now if None)."""
        taken_at = time.monotonic() if taken_at is None else taken_at
        self.metrics.batch_size.observe(len(batch))
        deliveries = [d for d in [await self.decode(m) for m in batch] if d is not None]
        if deliveries:
            await self.handle(deliveries, taken_at)

    async def decode(self, message: AbstractIncomingMessage) -> Delivery | None:
        """The message's event, or None when the message was dead-lettered or skipped."""
        try:
            raw = orjson.loads(message.body)
        except orjson.JSONDecodeError as exc:
            await self.dead_letter(message, f"body is not JSON: {exc}")
            return None
        if not isinstance(raw, dict) or not isinstance(raw.get("event_type"), str):
            await self.dead_letter(message, "body is not an event: no event_type")
            return None
        event_type: str = raw["event_type"]
        if event_type in self.consumer.ignored_types:
            logger.debug("ignoring %s on %s, as its routes say", event_type, message.routing_key)
            await message.ack()
            self.metrics.consumed(event_type, "ignored")
            return None
        route = self.consumer.by_type.get(event_type)
        if route is None:
            await self.skip(
                message, event_type, f"no route of {self.consumer.queue.name} takes {event_type}"
            )
            return None
        # Through acme.events, an event travels with its own routing key; on another key it reached
        # this queue by a producer's mistake (a message sent to the queue by its name, as `dlq
        # replay` does, is meant for it).
        if message.exchange == EXCHANGE and message.routing_key != route.event_type.routing_key:
            await self.skip(
                message,
                event_type,
                f"{event_type} came with routing key {message.routing_key!r}, "
                f"not its own {route.event_type.routing_key!r}",
            )
            return None
        try:
            event = route.event_type.model_validate(raw)
        except ValidationError as exc:
            await self.dead_letter(
                message, f"invalid {raw['event_type']}: {_validation_summary(exc)}"
            )
            return None
        return Delivery(message, route, event)

    async def handle(self, deliveries: Sequence[Delivery], taken_at: float) -> None:
        pause = 0.1
        while True:
            try:
                started = time.perf_counter()
                handled, duplicates = await self.handle_once(deliveries, taken_at)
                self.metrics.handler_seconds.observe(time.perf_counter() - started)
                break
            except Exception as exc:
                database = is_transient(exc)
                if not (database or isinstance(exc, DependencyUnavailableError)):
                    await self.handle_failure(deliveries, exc, taken_at)
                    return
                # Nothing wrong with the messages: retried in place, unacked, so that an outage
                # does not use up their deliveries and send good orders to the dead-letter queue.
                if database:
                    self.metrics.db_retries.inc()
                logger.warning(
                    "%s unavailable handling %d event(s) on %s (%r); retrying in %.1fs",
                    "database" if database else "a dependency",
                    len(deliveries),
                    self.consumer.queue.name,
                    exc,
                    pause,
                )
                if await wait_or_stop(self.stop, pause):
                    # Left unacked: closing the channel hands the messages back to the queue.
                    self.gave_back = True
                    return
                pause = min(pause * 2, RETRY_PAUSE_MAX)

        self.metrics.settled(handled, duplicates)
        for event in duplicates:
            with event_log_context(event):
                logger.info(
                    "duplicate %s %s for order %s ignored",
                    event.event_type,
                    event.event_id,
                    event.order_id,
                )
        # Ack only now that the transaction has committed: a crash before this line redelivers
        # the messages, and processed_events turns the redelivery into a no-op.
        await self.ack(delivery.message for delivery in deliveries)

    async def handle_failure(
        self, deliveries: Sequence[Delivery], exc: Exception, taken_at: float
    ) -> None:
        """A batch that failed for a reason of its own: alone, each event meets its own fate; one
        that can never succeed is dead-lettered, any other retried later."""
        if len(deliveries) > 1:
            for delivery in deliveries:
                await self.handle([delivery], taken_at)
        elif isinstance(exc, UnprocessableEventError):
            with event_log_context(deliveries[0].event):
                await self.dead_letter(deliveries[0].message, str(exc))
        else:
            await self.retry_later(deliveries[0], exc)

    async def ack(self, messages: Iterable[AbstractIncomingMessage]) -> None:
        """Ack the messages of a batch: with one multiple-ack when that takes exactly them, else
        one by one. A message that cannot be acked (its channel is gone) is redelivered."""
        messages = list(messages)
        if messages and self.multiple_ack_is_exact():
            try:
                await messages[-1].ack(multiple=True)
                return
            except Exception:
                logger.debug("multiple-ack failed; acking one by one", exc_info=True)
        unacked = 0
        for message in messages:
            try:
                await message.ack()
            except Exception:
                unacked += 1
        if unacked:
            logger.warning(
                "could not ack %d message(s) on %s; they will be redelivered",
                unacked,
                self.consumer.queue.name,
            )

    def multiple_ack_is_exact(self) -> bool:
        # The runner has its channel to itself and takes messages in delivery order, so every
        # message delivered before a batch's last one is settled, or in the batch, or waiting for
        # a requeue, or was given back unsettled; a multiple-ack would take the last two too.
        return not self.requeues and not self.gave_back

    async def handle_once(
        self, deliveries: Sequence[Delivery], taken_at: float
    ) -> tuple[list[Event], list[Event]]:
        """Handle the batch (taken from the inbox at `taken_at`, by time.monotonic()) in one
        transaction; returns the events handled, and the duplicates: those this service had
        handled before, and repeats within the batch, which change nothing."""
        event_ids = sorted({d.event.event_id for d in deliveries})
        async with (
            tracing.handling(self.consumer.queue.name, deliveries) as spans,
            self.pool.acquire() as conn,
            conn.transaction(),
        ):
            # Sorted, so two transactions that share events take their keys in the same order.
            first_time: set[UUID] = {
                row["event_id"]
                for row in await conn.fetch(
                    RECORD_PROCESSED,
                    self.consumer.service,
                    event_ids,
                    time.monotonic() - taken_at,
                )
            }
            by_handler: dict[Handler[Any], list[Event]] = {}
            handled: list[Event] = []
            duplicates: list[Event] = []
            for delivery in deliveries:
                if delivery.event.event_id in first_time:
                    first_time.discard(delivery.event.event_id)
                    handled.append(delivery.event)
                    by_handler.setdefault(delivery.route.handler, []).append(delivery.event)
                else:
                    duplicates.append(delivery.event)
            emitted: list[Event] = []
            for handler, events in by_handler.items():
                emitted.extend(await handler(events, conn))
            emitted = _with_causes(emitted, by_handler.values())
            # Each emitted event continues the trace of the event that caused it.
            await add_to_outbox(conn, emitted, spans.trace_contexts(emitted))
        # Committed: the events will be published.
        self.metrics.emitted(emitted)
        return handled, duplicates

    async def retry_later(self, delivery: Delivery, error: Exception) -> None:
        """The handler failed for the delivery's own reason: send it to wait for its next attempt,
        or park it with the error when this was its last one."""
        message, event = delivery.message, delivery.event
        if self.retries is None:
            self.requeue_in_place(delivery, error)
            return
        attempt = attempt_of(message.headers)
        delay = self.retries.policy.delay_after(attempt)
        with event_log_context(event):
            if delay is None:
                logger.error(
                    "handling %s %s for order %s failed (attempt %d, the last)",
                    event.event_type,
                    event.event_id,
                    event.order_id,
                    attempt,
                    exc_info=error,
                )
                await self.dead_letter(
                    message, f"handler failed {attempt} attempt(s); last error: {error_text(error)}"
                )
                return
            logger.error(
                "handling %s %s for order %s failed (attempt %d); next attempt within %.1fs",
                event.event_type,
                event.event_id,
                event.order_id,
                attempt,
                delay,
                exc_info=error,
            )
            try:
                await self.send_to_retry_queue(message, attempt, delay, error)
            except Exception:
                logger.warning(
                    "could not send message %s to its retry queue; requeued in place",
                    message.message_id,
                    exc_info=True,
                )
                self.requeue_in_place(delivery, error)
                return
        # Only once the broker holds the copy, so the message is never in neither place: a crash
        # before this line leaves both, and processed_events lets only one of them take effect.
        await message.ack()
        self.metrics.consumed(event.event_type, "retried")

    async def send_to_retry_queue(
        self, message: AbstractIncomingMessage, attempt: int, delay: float, error: Exception
    ) -> None:
        """Publish a copy of the message, marked as the next attempt, to the retry queue of this
        attempt, expiring within `delay` seconds; returns once the broker confirmed it."""
        assert self.retries is not None
        # The original's earlier deaths in retry queues are not carried: the attempt header tells
        # its story, and the list would grow with every attempt.
        headers = {
            k: v for k, v in (message.headers or {}).items() if k not in RABBITMQ_DEATH_HEADERS
        }
        headers[ATTEMPT_HEADER] = attempt + 1
        headers[LAST_ERROR_HEADER] = error_text(error)
        copy = persistent_copy(
            message, headers, expiration=expiration_ms(delay, random.random()) / 1000
        )
        # Unroutable (its retry queue is missing) comes back, instead of vanishing.
        async with asyncio.timeout(RETRY_CONFIRM_TIMEOUT):
            await publish_confirmed(
                self.retries.exchange, copy, retry_queue_name(self.consumer.queue.name, attempt)
            )

    def requeue_in_place(self, delivery: Delivery, error: Exception) -> None:
        """Give the message back to its queue after a short pause, unacked: for when it cannot
        wait in a retry queue. The queue's delivery limit bounds how often."""
        message, event = delivery.message, delivery.event
        self.metrics.consumed(event.event_type, "retried")
        deliveries = earlier_deliveries(message)
        # The requeue task copies the context: its lines carry the event's fields too.
        with event_log_context(event):
            logger.error(
                "handling %s %s for order %s failed (delivery %d); requeued",
                event.event_type,
                event.event_id,
                event.order_id,
                deliveries + 1,
                exc_info=error,
            )
            # A pause before the requeue keeps a failing handler out of a hot loop, while the
            # next batches go on being handled.
            task = asyncio.create_task(
                self._requeue_after(message, min(0.2 * 2**deliveries, RETRY_PAUSE_MAX))
            )
        self.requeues.add(task)
        task.add_done_callback(self.requeues.discard)

    async def _requeue_after(self, message: AbstractIncomingMessage, pause: float) -> None:
        try:
            if not await wait_or_stop(self.stop, pause):
                await message.nack(requeue=True)
        except Exception:
            logger.warning(
                "could not requeue message %s; it will be redelivered",
                message.message_id,
                exc_info=True,
            )

    async def skip(self, message: AbstractIncomingMessage, event_type: str, why: str) -> None:
        """Park a message no route takes, where an operator sees it and can replay it once a
        service takes its type: a producer's bug must not vanish as an ack."""
        await self.dead_letter(message, f"skipped: {why}", outcome="skipped", event_type=event_type)

    async def dead_letter(
        self,
        message: AbstractIncomingMessage,
        reason: str,
        outcome: Outcome = "dead_lettered",
        event_type: str | None = None,
    ) -> None:
        """Park the message in the queue's dead-letter queue with the reason, then ack it. The copy
        is confirmed by the broker before the original is acked, so it cannot be lost between;
        when it is not (refused, unroutable, no confirm within the timeout, the channel failing),
        the message is given back instead. `event_type`, when known from the body, labels the
        metric (else the AMQP type does)."""
        label = event_type_label(event_type if event_type is not None else message.type)
        queue = self.consumer.queue
        headers = dict(message.headers or {})
        headers.update(
            {
                "x-dead-letter-reason": reason[:2000],
                "x-dead-letter-queue": queue.name,
                "x-dead-lettered-at": datetime.now(UTC).isoformat(),
            }
        )
        try:
            async with asyncio.timeout(self.dead_letter_timeout):
                if self.dead_letters_failed and self.open_channel is not None:
                    await self.reopen_dead_letters(self.open_channel)
                # A returned message (no DLQ bound) is no copy at all.
                await publish_confirmed(
                    self.dead_letters, persistent_copy(message, headers), queue.name
                )
        except Exception as exc:
            # Broad on purpose: whatever went wrong, the copy is not known to be safe.
            self.dead_letters_failed = True
            await self.give_back(message, label, f"its dead-letter copy failed ({exc!r}); {reason}")
            return
        await message.ack()
        self.metrics.consumed(label, outcome)
        logger.warning(
            "%s message %s from %s to %s: %s",
            "SKIPPED" if outcome == "skipped" else "DEAD-LETTERED",
            message.message_id,
            queue.name,
            queue.dead_letter_queue,
            reason,
        )

    async def reopen_dead_letters(
        self, open_channel: Callable[[], Awaitable[AbstractChannel]]
    ) -> None:
        if self.dead_letter_channel is not None:
            with contextlib.suppress(Exception):
                await self.dead_letter_channel.close()
            self.dead_letter_channel = None
        self.dead_letter_channel = await open_channel()
        self.dead_letters = await declare_dead_letter_exchange(self.dead_letter_channel)
        self.dead_letters_failed = False

    async def give_back(self, message: AbstractIncomingMessage, label: str, why: str) -> None:
        """Return a message that could not be settled to its queue, after a pause that grows with
        its deliveries, so that it is tried again rather than lost or acked unhandled."""
        self.metrics.consumed(label, "given_back")
        pause = min(
            DEAD_LETTER_PAUSE_FIRST * 2 ** earlier_deliveries(message), DEAD_LETTER_PAUSE_MAX
        )
        logger.error(
            "could not park message %s from %s: %s; giving it back in %.2fs",
            message.message_id,
            self.consumer.queue.name,
            why,
            pause,
        )
        if await wait_or_stop(self.stop, pause):
            # Left unacked: closing the channel hands the message back to the queue.
            self.gave_back = True
            return
        try:
            await message.nack(requeue=True)
        except Exception:
            # Still unsettled, perhaps on a channel that stays open: no later multiple-ack may
            # take it with a batch it was not part of.
            self.gave_back = True
            logger.warning(
                "could not give back message %s; it stays unacked until its channel closes",
                message.message_id,
                exc_info=True,
            )


async def serve_consumers(
    settings: Settings, stop: asyncio.Event, service: str, consumers: Sequence[Consumer]
) -> None:
    """Run a consumer service until `stop` is set, then stop taking messages, let the ones in
    flight finish (up to SHUTDOWN_TIMEOUT) and close the connections."""
    async with open_connections(settings, stop, service) as connections:
        if connections is None:
            return
        policy = RetryPolicy.from_settings(settings)
        runners: list[tuple[ConsumerRunner, AbstractQueue, str]] = []
        batch_loops: list[asyncio.Task[None]] = []
        try:
            for consumer in consumers:
                # A channel per consumer: a multiple-ack then covers only that consumer's
                # deliveries (see ConsumerRunner.ack), and each queue has its own prefetch.
                channel = await connections.broker.channel()
                await channel.set_qos(prefetch_count=settings.prefetch_count)
                queue = await declare_queue(channel, consumer.queue, settings.quorum_group_size)
                retries = RetryQueues(
                    await declare_retry_queues(channel, queue, policy, settings.quorum_group_size),
                    policy,
                )
                runner = ConsumerRunner(
                    consumer,
                    connections.pool,
                    # Dead-letter copies go out on the consumer's channel, with confirms, until one
                    # fails; then on channels of the runner's own.
                    await declare_dead_letter_exchange(channel),
                    stop,
                    settings.prefetch_count,
                    retries,
                    dead_letter_timeout=settings.dead_letter_timeout,
                    open_channel=connections.broker.channel,
                )
                batch_loops.append(asyncio.create_task(runner.run()))
                tag = await queue.consume(runner.on_message)
                runners.append((runner, queue, tag))
            logger.info("ready: consuming %s", ", ".join(c.queue.name for c in consumers))

            await stop.wait()
            try:
                # Bounded as a whole: cancelling a consumer waits for the broker, which may be
                # away.
                async with asyncio.timeout(settings.shutdown_timeout):
                    for _, queue, tag in runners:
                        await queue.cancel(tag)
                    await asyncio.gather(*(runner.drained() for runner, _, _ in runners))
            except TimeoutError:
                logger.warning(
                    "in-flight messages did not finish within %.0fs; RabbitMQ will redeliver them",
                    settings.shutdown_timeout,
                )
        finally:
            for loop in batch_loops:
                loop.cancel()
            await asyncio.gather(*batch_loops, return_exceptions=True)
