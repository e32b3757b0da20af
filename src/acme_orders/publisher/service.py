"""The publisher process: relays the outbox until stopped, woken by NOTIFY, purges old rows
every HOUSEKEEPING_INTERVAL, cancels the orders not final ORDER_TIMEOUT after they were placed
(expiry.py), and samples the metrics that need a query (outbox backlog, orders by status)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

from acme_orders.core import topology
from acme_orders.core.database import is_transient
from acme_orders.core.messaging import declare_exchange
from acme_orders.core.observability.logs import log_context
from acme_orders.core.observability.metrics import (
    EVENTS_EMITTED,
    ORDERS_EXPIRED,
    ORDERS_SAMPLE_INTERVAL,
    ORDERS_WINDOW,
    OUTBOX_SAMPLE_INTERVAL,
    export_publisher_metrics,
    set_orders_gauge,
    set_outbox_gauges,
)
from acme_orders.core.orders import count_recent_orders
from acme_orders.core.outbox import backlog
from acme_orders.core.runtime import CLOSE_TIMEOUT, open_connections, wait_any, wait_or_stop
from acme_orders.core.settings import Settings
from acme_orders.ops.housekeeping import purge_all
from acme_orders.publisher.expiry import expire_due_orders, pass_interval
from acme_orders.publisher.relay import (
    OutboxUnavailableError,
    listen_for_outbox,
    relay_outbox_batch,
)

logger = logging.getLogger(__name__)

SERVICE = topology.PUBLISHER
# Seconds between attempts to relay after a failed batch: from FIRST_PAUSE, doubling up to
# MAX_PAUSE. A low cap: an attempt costs one claim and one publish, and a long wait would outlast
# the outage it waits for (a broker node failing over takes seconds).
FIRST_PAUSE = 0.1
MAX_PAUSE = 1.0
# Seconds between attempts while the database refuses the relay for a reason of its own, not an
# outage (a missing table, a revoked grant): that waits for an operator, and a faster retry would
# only fill the log with its traceback.
FAULT_PAUSE = 10.0
# The first purge waits this long (or HOUSEKEEPING_INTERVAL, if shorter), so that a publisher
# starting with a backlog relays it first.
FIRST_HOUSEKEEPING_DELAY = 5.0
# Orders one expiry pass looks at, in one transaction; a full pass is followed by the next at once.
EXPIRY_BATCH_SIZE = 500


async def main(settings: Settings, stop: asyncio.Event) -> None:
    export_publisher_metrics()
    async with open_connections(settings, stop, SERVICE, pool_size=3) as connections:
        if connections is None:
            return
        publishing = await open_exchange(connections.broker)
        logger.info("ready: relaying the outbox to %s", publishing.exchange.name)
        housekeeping = asyncio.create_task(
            housekeep_until_stopped(settings, connections.pool, stop)
        )
        gauges = asyncio.create_task(sample_gauges_until_stopped(connections.pool, stop))
        expiry = asyncio.create_task(expire_until_stopped(settings, connections.pool, stop))
        try:
            await relay_until_stopped(
                settings, connections.pool, connections.broker, stop, publishing
            )
        finally:
            # A purge or an expiry pass cut short is a rolled-back batch; the next run does it
            # again.
            for task in (housekeeping, gauges, expiry):
                task.cancel()
            await asyncio.gather(housekeeping, gauges, expiry, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class Publishing:
    """The channel the relay publishes on, with publisher confirms, and `acme.events` on it."""

    channel: AbstractChannel
    exchange: AbstractExchange


async def open_exchange(broker: AbstractRobustConnection) -> Publishing:
    channel = await broker.channel(publisher_confirms=True)
    return Publishing(channel, await declare_exchange(channel))


def next_pause(pause: float) -> float:
    """The wait before the next attempt after a failed batch: doubling from FIRST_PAUSE, but never
    above MAX_PAUSE, so that the relay is back within a second of the outage's end."""
    return min(pause * 2, MAX_PAUSE)


class Failure(enum.Enum):
    """Why a batch failed, as far as what to do next goes."""

    # An outage (database.is_transient): retried, with one warning for the whole episode.
    DATABASE_UNAVAILABLE = "database unavailable"
    # The database refused for a reason of its own: an error each attempt, FAULT_PAUSE apart.
    DATABASE_FAULT = "database fault"
    # The broker refused or lost the batch: retried on a fresh channel.
    BROKER = "broker"


@dataclass(frozen=True, slots=True)
class Retry:
    """What the relay does after a failed batch: say so as `failure` calls for, give its channel
    up if `reopen_channel`, and wait `pause` seconds before the next attempt."""

    failure: Failure
    pause: float
    reopen_channel: bool


def retry_after(error: Exception, pause: float) -> Retry:
    """The relay's next step after a batch failed with `error`, `pause` being the pause that the
    failure before it (of the same episode) would have had next."""
    if isinstance(error, OutboxUnavailableError):
        # Nothing was wrong with the channel: the database failed before or after the publishes.
        cause = error.__cause__ or error
        if is_transient(cause):
            return Retry(Failure.DATABASE_UNAVAILABLE, pause, reopen_channel=False)
        return Retry(Failure.DATABASE_FAULT, FAULT_PAUSE, reopen_channel=False)
    # On a fresh channel: one whose publishes were nacked (a quorum queue whose leader died, in
    # RabbitMQ 3.10) can go on being nacked until that node is back.
    return Retry(Failure.BROKER, pause, reopen_channel=True)


async def relay_until_stopped(
    settings: Settings,
    pool: asyncpg.Pool,
    broker: AbstractRobustConnection,
    stop: asyncio.Event,
    publishing: Publishing | None = None,
) -> None:
    """Relay batches until stopped, on `publishing` and, after a failed batch, on a new one."""
    wakeup = asyncio.Event()
    listener = asyncio.create_task(listen_for_outbox(settings, wakeup, stop))
    pause = FIRST_PAUSE
    # When the database became unavailable, while it is (monotonic seconds).
    database_away_since: float | None = None
    try:
        while not stop.is_set():
            wakeup.clear()
            try:
                if publishing is None:
                    publishing = await open_exchange(broker)
                relayed = await relay_outbox_batch(
                    pool, publishing.exchange, settings.outbox_batch_size
                )
            except Exception as exc:
                # The rows stay NEW until the batch goes through.
                retry = retry_after(exc, pause)
                if retry.failure is Failure.DATABASE_UNAVAILABLE:
                    if database_away_since is None:
                        database_away_since = time.monotonic()
                        logger.warning(
                            "database unavailable (%r); relaying again once it is back, trying "
                            "every %.0fs at most",
                            exc.__cause__,
                            MAX_PAUSE,
                        )
                elif retry.failure is Failure.DATABASE_FAULT:
                    logger.error(
                        "the database refused the relay (%r); retrying in %.0fs",
                        exc.__cause__,
                        retry.pause,
                        exc_info=exc.__cause__,
                    )
                else:
                    logger.warning("relay failed (%r); retrying in %.1fs", exc, retry.pause)
                if retry.reopen_channel and publishing is not None:
                    await close_quietly(publishing.channel)
                    publishing = None
                await wait_or_stop(stop, retry.pause)
                pause = next_pause(pause)
                continue
            if database_away_since is not None:
                logger.info(
                    "database back after %.1fs; relaying again",
                    time.monotonic() - database_away_since,
                )
                database_away_since = None
            pause = FIRST_PAUSE
            if relayed == settings.outbox_batch_size:
                continue  # a full batch: there is probably more
            # Asleep until a NOTIFY, a stop, or the slow poll that covers a missed NOTIFY.
            await wait_any(wakeup, stop, within=settings.outbox_poll_interval)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def close_quietly(channel: AbstractChannel) -> None:
    """Close a channel that failed, within CLOSE_TIMEOUT, whatever state it is in."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT)


async def housekeep_until_stopped(
    settings: Settings, pool: asyncpg.Pool, stop: asyncio.Event
) -> None:
    """Purge old rows every HOUSEKEEPING_INTERVAL until stopped. Several publishers may do this at
    once: their batches skip each other's rows. A failed purge is logged and tried again at the
    next interval; it must never take the relay down with it."""
    delay = min(FIRST_HOUSEKEEPING_DELAY, settings.housekeeping_interval)
    while not await wait_or_stop(stop, delay):
        delay = settings.housekeeping_interval
        try:
            await purge_all(pool, settings)
        except Exception as exc:
            logger.warning(
                "housekeeping failed (%r); next attempt in %.0fs",
                exc,
                settings.housekeeping_interval,
            )


async def expire_until_stopped(settings: Settings, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
    """Cancel the orders that fell due, a pass every expiry.pass_interval, until stopped; nothing
    with ORDER_TIMEOUT 0. A failed pass is logged and tried again at the next interval; it must
    never take the relay down with it."""
    if settings.order_timeout == 0:
        return
    timeout = timedelta(seconds=settings.order_timeout)
    interval = pass_interval(settings.order_timeout)
    emitted = EVENTS_EMITTED.labels(SERVICE, "OrderCancelled")
    while not await wait_or_stop(stop, interval):
        try:
            while (run := await expire_due_orders(pool, timeout, EXPIRY_BATCH_SIZE)) is not None:
                for order_id in run.expired:
                    with log_context(order_id=order_id):
                        logger.info(
                            "order %s cancelled: not final %gs after it was placed",
                            order_id,
                            settings.order_timeout,
                        )
                ORDERS_EXPIRED.inc(len(run.expired))
                emitted.inc(len(run.expired))
                if run.due < EXPIRY_BATCH_SIZE:
                    break
        except Exception as exc:
            logger.warning(
                "expiring overdue orders failed (%r); next attempt in %.1fs", exc, interval
            )


async def sample_gauges_until_stopped(pool: asyncpg.Pool, stop: asyncio.Event) -> None:
    """Keep the metrics that cost a query up to date, here only, so that they are exported once:
    the outbox backlog every OUTBOX_SAMPLE_INTERVAL, orders by status every
    ORDERS_SAMPLE_INTERVAL. A sample that fails (the database is away) is skipped and the gauges
    keep their last values; it must never take the relay down."""
    orders_due = 0.0
    while True:
        try:
            async with asyncio.timeout(OUTBOX_SAMPLE_INTERVAL), pool.acquire() as conn:
                waiting = await backlog(conn)
                age = waiting.oldest_age.total_seconds() if waiting.oldest_age else 0.0
                set_outbox_gauges(waiting.new_rows, age)
                if time.monotonic() >= orders_due:
                    set_orders_gauge(await count_recent_orders(conn, ORDERS_WINDOW))
                    orders_due = time.monotonic() + ORDERS_SAMPLE_INTERVAL
        except Exception as exc:
            logger.debug("sampling the outbox and orders failed (%r); skipped", exc)
        if await wait_or_stop(stop, OUTBOX_SAMPLE_INTERVAL):
            return
