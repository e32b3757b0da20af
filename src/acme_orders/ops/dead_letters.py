"""Dead-letter queues for operators: see what is in them, and send messages back to be handled.

A message reaches `<queue>.dlq` in one of two ways: the consumer parked it (it can never succeed:
not JSON, the wrong shape, an order that does not exist), with our `x-dead-letter-*` headers; or
RabbitMQ moved it there after DELIVERY_LIMIT deliveries, with its `x-death` header.

Both functions read a dead-letter queue with basic.get and manual acks, holding every message
they took until they are done: a held message cannot be handed out twice, and whatever is not
acked (listed, not selected, or left behind by an error or a crash) goes back to the queue when
it is nacked or its channel closes. Only the messages in the queue when it was first looked at
are read, so messages that arrive meanwhile are left alone; with a `limit`, only the first that
many of them (the board's bounded view and its replays by message id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import aio_pika
import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
    HeadersType,
)
from aio_pika.exceptions import ChannelNotFoundEntity

from acme_orders.core.messaging import RABBITMQ_DEATH_HEADERS, connect_once, persistent_copy
from acme_orders.core.retries import ATTEMPT_HEADER, LAST_ERROR_HEADER
from acme_orders.core.settings import Settings
from acme_orders.core.topology import QueueSpec

logger = logging.getLogger(__name__)

DLQ_SUFFIX = QueueSpec("", ()).dead_letter_queue
PREVIEW_CHARS = 200
# How long a confirm may take before the replay gives up (the DLQ copy then stays where it is).
CONFIRM_TIMEOUT = 30.0
# How long a read of a dead-letter queue waits, on its way out, for the messages it gave back to
# be in the queue again (see _until_ready).
GIVEN_BACK_WITHIN = 2.0

# Headers that describe a death, dropped when a message is replayed: ours, and RabbitMQ's.
# Leaving x-death in would make RabbitMQ see a dead-lettering cycle if the message died again.
# x-delivery-count is written by the DLQ on redelivery and says nothing about the replay. Without
# its attempt header, a replayed message has all its attempts again.
_DEATH_HEADERS = RABBITMQ_DEATH_HEADERS | {
    ATTEMPT_HEADER,
    LAST_ERROR_HEADER,
    "x-dead-letter-reason",
    "x-dead-letter-queue",
    "x-dead-lettered-at",
}


class UnknownQueueError(LookupError):
    """A queue or dead-letter queue that does not exist on the broker."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message in a dead-letter queue, as an operator needs to see it."""

    queue: str  # the queue it was dead-lettered from
    message_id: str | None
    event_type: str | None
    order_id: str | None
    reason: str
    dead_lettered_at: datetime | None
    body_preview: str


def queue_names(queue: str) -> tuple[str, str]:
    """(queue, its dead-letter queue) for a queue given by either name."""
    original = queue.removesuffix(DLQ_SUFFIX)
    return original, QueueSpec(original, ()).dead_letter_queue


async def list_dead_letters(
    settings: Settings, queues: Sequence[str], limit: int | None = None
) -> list[DeadLetter]:
    """What is in the dead-letter queue of each queue, oldest first (with `limit`, at most that
    many of each); nothing is removed."""
    found: list[DeadLetter] = []
    async with _connection(settings) as connection:
        for name in queues:
            original, dlq = queue_names(name)
            async with _held_messages(connection, dlq, limit=limit) as (_, held):
                found.extend(describe(message, original) for message in held)
    return found


async def replay_dead_letters(
    settings: Settings, queue: str, message_ids: set[str] | None = None
) -> int:
    """Move messages from the queue's DLQ back to the queue (`Q` or `Q.dlq`); with `message_ids`,
    only those. Returns how many were moved (see move_dead_letters)."""
    return len(await move_dead_letters(settings, queue, message_ids))


async def move_dead_letters(
    settings: Settings, queue: str, message_ids: set[str] | None = None, limit: int | None = None
) -> list[DeadLetter]:
    """Move messages from the queue's DLQ back to the queue (`Q` or `Q.dlq`); with `message_ids`,
    only those; with `limit`, looking at no more than the first `limit` messages of the DLQ.
    Returns the messages moved.

    Each goes to the default exchange with the queue's name as routing key, so it reaches that
    queue alone, not every subscriber of acme.events. Its DLQ copy is acked only once the broker
    confirmed the new one: a failure in between leaves a duplicate, never a loss, and consumers
    ignore events they have already handled."""
    original, dlq = queue_names(queue)
    moved: list[DeadLetter] = []
    async with (
        _connection(settings) as connection,
        _held_messages(connection, dlq, check_exists=original, limit=limit) as (channel, held),
    ):
        for message in held:
            if message_ids is not None and message.message_id not in message_ids:
                continue  # given back to the DLQ, in place, on the way out
            await channel.default_exchange.publish(
                replayed(message),
                routing_key=original,
                # The queue was there a moment ago; if it went since, the broker returns the
                # message, the publish raises and the DLQ keeps its copy.
                mandatory=True,
                timeout=CONFIRM_TIMEOUT,
            )
            await message.ack()
            moved.append(describe(message, original))
            logger.info("replayed %s from %s to %s", message.message_id or "(no id)", dlq, original)
    return moved


def describe(message: AbstractIncomingMessage, queue: str) -> DeadLetter:
    """A DeadLetter from a message of `queue`'s dead-letter queue."""
    headers = message.headers or {}
    death = _last_death(headers)
    body = _json_object(message.body)
    reason = _text(headers.get("x-dead-letter-reason"))
    if reason is None:
        cause = _text(death.get("reason"))
        # Neither header: somebody published it into the DLQ by hand.
        reason = f"{cause} (by RabbitMQ)" if cause else "no reason recorded"
    return DeadLetter(
        queue=_text(headers.get("x-dead-letter-queue")) or _text(death.get("queue")) or queue,
        message_id=message.message_id,
        event_type=message.type or _text(body.get("event_type")),
        order_id=_text(body.get("order_id")),
        reason=reason,
        dead_lettered_at=_when(headers.get("x-dead-lettered-at")) or _when(death.get("time")),
        # A UTF-8 character is at most 4 bytes: decode no more than the preview can show.
        body_preview=message.body[: PREVIEW_CHARS * 4].decode("utf-8", errors="replace")[
            :PREVIEW_CHARS
        ],
    )


def replayed(message: AbstractIncomingMessage) -> aio_pika.Message:
    """A copy of a dead letter to publish again: the same body and properties, without the
    headers of its death, stamped with the time of the replay."""
    headers: HeadersType = {
        name: value for name, value in (message.headers or {}).items() if name not in _DEATH_HEADERS
    }
    headers["x-replayed-at"] = datetime.now(UTC).isoformat()
    return persistent_copy(message, headers)


@asynccontextmanager
async def _connection(settings: Settings) -> AsyncIterator[AbstractConnection]:
    # Not a robust connection: a one-shot tool should fail, not reconnect behind its own back
    # while it holds messages.
    connection = await connect_once(settings, "dead letters")
    async with connection:
        yield connection


@asynccontextmanager
async def _held_messages(
    connection: AbstractConnection,
    dlq: str,
    *,
    check_exists: str | None = None,
    limit: int | None = None,
) -> AsyncIterator[tuple[AbstractChannel, list[AbstractIncomingMessage]]]:
    """Take the messages now in `dlq` (at most `limit` of them) without acking them, on a channel
    of their own, and give back on the way out every one that was not acked. With
    `check_exists`, that queue must exist too."""
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    async with channel:
        queue = await _existing_queue(channel, dlq)
        if check_exists is not None:
            await _existing_queue(channel, check_exists)
        count = queue.declaration_result.message_count or 0
        if limit is not None:
            count = min(count, limit)
        held: list[AbstractIncomingMessage] = []
        try:
            # A message we hold is not handed out again, so `count` gets calls see each message
            # once; new arrivals queue up behind them and are left alone.
            while len(held) < count:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break  # somebody else took some
                held.append(message)
            yield channel, held
        finally:
            # Give back the rest in their order now (closing the channel would too), so that the
            # queue keeps them in place. nack rather than reject: from RabbitMQ 4.3 a reject with
            # requeue counts towards a quorum queue's delivery limit, a nack does not.
            if not channel.is_closed:
                given_back = [message for message in held if not message.processed]
                for message in given_back:
                    await message.nack(requeue=True)
                if given_back:
                    await _until_ready(channel, dlq, len(given_back))


async def _until_ready(channel: AbstractChannel, name: str, count: int) -> None:
    """Return once the queue shows at least `count` ready messages, or after GIVEN_BACK_WITHIN
    seconds. A quorum queue applies a nack's requeue in its own time: without this wait, a
    caller that looks again right away (the board's replay after its dry run) may find the
    messages it was just shown still on their way back, and the queue empty."""
    deadline = time.monotonic() + GIVEN_BACK_WITHIN
    while time.monotonic() < deadline:
        queue = await channel.declare_queue(name, passive=True)
        if (queue.declaration_result.message_count or 0) >= count:
            return
        await asyncio.sleep(0.02)
    # Somebody else took some meanwhile (another operator's replay): nothing to wait for.


async def _existing_queue(channel: AbstractChannel, name: str) -> AbstractQueue:
    try:
        return await channel.declare_queue(name, passive=True)
    except ChannelNotFoundEntity as exc:
        raise UnknownQueueError(f"queue {name!r} does not exist") from exc


def _last_death(headers: HeadersType) -> dict[str, object]:
    """The latest entry of RabbitMQ's x-death header (it lists the newest first), or {}."""
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return dict(deaths[0])
    return {}


def _json_object(body: bytes) -> dict[str, object]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    return None


def _when(value: object) -> datetime | None:
    """A header time: our ISO 8601 string, or the AMQP timestamp of x-death."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = _text(value)
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
