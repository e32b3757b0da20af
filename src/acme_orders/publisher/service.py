"""The publisher process: relays the outbox until stopped, woken by NOTIFY, purges old rows
every HOUSEKEEPING_INTERVAL, and samples the metrics that need a query (outbox backlog, orders by
status)."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
from aio_pika.abc import AbstractExchange

from acme_orders.housekeeping import purge_all
from acme_orders.messaging import declare_exchange
from acme_orders.observability.metrics import (
    ORDERS_SAMPLE_INTERVAL,
    OUTBOX_SAMPLE_INTERVAL,
    count_recent_orders,
    export_publisher_metrics,
    sample_outbox,
    set_orders_gauge,
    set_outbox_gauges,
)
from acme_orders.publisher.relay import listen_for_outbox, relay_outbox_batch
from acme_orders.runtime import open_connections, wait_any, wait_or_stop
from acme_orders.settings import Settings

logger = logging.getLogger(__name__)

SERVICE = "publisher"
# The first purge waits this long (or HOUSEKEEPING_INTERVAL, if shorter), so that a publisher
# starting with a backlog relays it first.
FIRST_HOUSEKEEPING_DELAY = 5.0


async def main(settings: Settings, stop: asyncio.Event) -> None:
    export_publisher_metrics()
    async with open_connections(settings, stop, SERVICE, pool_size=2) as connections:
        if connections is None:
            return
        channel = await connections.broker.channel(publisher_confirms=True)
        exchange = await declare_exchange(channel)
        logger.info("ready: relaying the outbox to %s", exchange.name)
        housekeeping = asyncio.create_task(
            housekeep_until_stopped(settings, connections.pool, stop)
        )
        gauges = asyncio.create_task(sample_gauges_until_stopped(connections.pool, stop))
        try:
            await relay_until_stopped(settings, connections.pool, exchange, stop)
        finally:
            # A purge cut short is a rolled-back batch; the next run does it again.
            housekeeping.cancel()
            gauges.cancel()
            await asyncio.gather(housekeeping, gauges, return_exceptions=True)


async def relay_until_stopped(
    settings: Settings, pool: asyncpg.Pool, exchange: AbstractExchange, stop: asyncio.Event
) -> None:
    wakeup = asyncio.Event()
    listener = asyncio.create_task(listen_for_outbox(settings, wakeup, stop))
    pause = 0.1
    try:
        while not stop.is_set():
            wakeup.clear()
            try:
                relayed = await relay_outbox_batch(pool, exchange, settings.outbox_batch_size)
            except Exception as exc:
                # The broker or the database is away; the rows stay NEW until they are back.
                logger.warning("relay failed (%r); retrying in %.1fs", exc, pause)
                await wait_or_stop(stop, pause)
                pause = min(pause * 2, 10.0)
                continue
            pause = 0.1
            if relayed == settings.outbox_batch_size:
                continue  # a full batch: there is probably more
            # Asleep until a NOTIFY, a stop, or the slow poll that covers a missed NOTIFY.
            await wait_any(wakeup, stop, within=settings.outbox_poll_interval)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


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


async def sample_gauges_until_stopped(pool: asyncpg.Pool, stop: asyncio.Event) -> None:
    """Keep the metrics that cost a query up to date, here only, so that they are exported once:
    the outbox backlog every OUTBOX_SAMPLE_INTERVAL, orders by status every
    ORDERS_SAMPLE_INTERVAL. A sample that fails (the database is away) is skipped and the gauges
    keep their last values; it must never take the relay down."""
    orders_due = 0.0
    while True:
        try:
            async with asyncio.timeout(OUTBOX_SAMPLE_INTERVAL):
                set_outbox_gauges(await sample_outbox(pool))
                if time.monotonic() >= orders_due:
                    set_orders_gauge(await count_recent_orders(pool))
                    orders_due = time.monotonic() + ORDERS_SAMPLE_INTERVAL
        except Exception as exc:
            logger.debug("sampling the outbox and orders failed (%r); skipped", exc)
        if await wait_or_stop(stop, OUTBOX_SAMPLE_INTERVAL):
            return
