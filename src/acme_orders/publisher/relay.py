"""The outbox relay: NEW rows go to `acme.events`, and become SENT once the broker confirmed them.

A batch is claimed and marked SENT by one statement (FOR UPDATE SKIP LOCKED) in a transaction that
stays open while its messages are published and commits only once the broker confirmed them all: a
publish that fails rolls the batch back to NEW, a publisher that dies mid-batch leaves its rows NEW
for the next one (which
publishes them again with the same event_id; consumers ignore what they have already handled), and
several publishers share the work without ever holding the same row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence

import asyncpg
from aio_pika.abc import AbstractExchange

from acme_orders.core.messaging import outbox_message
from acme_orders.core.observability import tracing
from acme_orders.core.observability.metrics import record_relayed
from acme_orders.core.outbox import OutboxRow, claim_for_publishing
from acme_orders.core.runtime import retry_until_ready, wait_any
from acme_orders.core.settings import Settings

logger = logging.getLogger(__name__)

OUTBOX_CHANNEL = "event_outbox"
# A publish not confirmed by then is treated as failed, so that a stalled broker cannot hold the
# batch's row locks forever.
CONFIRM_TIMEOUT = 30.0


class OutboxUnavailableError(Exception):
    """The database failed the batch (its error is the __cause__): the outbox could not be read,
    claimed or marked SENT. Not the broker's doing, so the channel is as good as before."""


async def relay_outbox_batch(pool: asyncpg.Pool, exchange: AbstractExchange, limit: int) -> int:
    """Publish up to `limit` NEW events, oldest first; returns how many were relayed.

    A publish that fails raises its own error (publish_all); anything else that fails the batch
    is the database's, raised as OutboxUnavailableError."""
    started = time.perf_counter()
    publishing = False
    try:
        async with pool.acquire() as conn, conn.transaction():
            rows = await claim_for_publishing(conn, limit)
            if not rows:
                return 0
            publishing = True
            with tracing.publishing(rows) as trace_headers:
                await publish_all(exchange, rows, trace_headers)
            publishing = False
    except Exception as exc:
        if publishing:
            raise
        raise OutboxUnavailableError(f"the outbox is out of reach: {exc!r}") from exc
    record_relayed([row.event_type for row in rows], time.perf_counter() - started)
    counts = Counter(row.routing_key for row in rows)
    logger.info(
        "relayed %d events (%s)",
        len(rows),
        ", ".join(f"{key} {n}" for key, n in sorted(counts.items())),
    )
    return len(rows)


async def publish_all(
    exchange: AbstractExchange,
    rows: Sequence[OutboxRow],
    trace_headers: Sequence[Mapping[str, str] | None],
) -> None:
    """Publish every row, all in flight at once, and return once the broker confirmed them all.

    They leave in id order: each publish is queued on the channel in the order its task starts,
    which is the order given here. The first one that fails (nacked, the channel closed, no
    confirm within CONFIRM_TIMEOUT) cancels the others and waits for them before its error is
    raised, so that the batch has stopped publishing by the time its transaction rolls back: a
    publish left running would send its row after the row is NEW again (a duplicate of the next
    attempt, or of another publisher's) and fail with nobody to hear it. Raises that first error.
    """
    try:
        async with asyncio.TaskGroup() as publishes:
            for row, headers in zip(rows, trace_headers, strict=True):
                publishes.create_task(
                    exchange.publish(
                        outbox_message(row, headers),
                        routing_key=row.routing_key,
                        # An event nobody subscribes to yet (inventory.released) is dropped, not
                        # returned: that is pub/sub, not an error.
                        mandatory=False,
                        timeout=CONFIRM_TIMEOUT,
                    )
                )
    except ExceptionGroup as failed:
        # One nack often fails many publishes at once (RabbitMQ nacks with `multiple`): the
        # first says what went wrong, for the caller's retry and its log line.
        first = failed.exceptions[0]
        if len(failed.exceptions) > 1:
            first.add_note(f"{len(failed.exceptions)} publishes of the batch failed")
        raise first from None


async def listen_for_outbox(settings: Settings, wakeup: asyncio.Event, stop: asyncio.Event) -> None:
    """Keep a LISTEN on the outbox channel and set `wakeup` on every NOTIFY, reconnecting when the
    connection is lost. Quietly: the relay, which polls meanwhile, says when the database is
    unavailable, once for the whole outage."""
    while not stop.is_set():
        conn = await retry_until_ready(
            lambda: asyncpg.connect(settings.database_url, timeout=10),
            "PostgreSQL (LISTEN)",
            stop,
            quiet=True,
        )
        if conn is None:
            return
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
        try:
            await conn.add_listener(OUTBOX_CHANNEL, lambda *_args: wakeup.set())
            # Rows may have arrived while nobody was listening.
            wakeup.set()
            await wait_any(stop, lost)
            if lost.is_set() and not stop.is_set():
                logger.info("LISTEN connection lost; reconnecting")
        finally:
            await conn.close(timeout=5)
