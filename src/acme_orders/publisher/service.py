"""The publisher process: relays the outbox until stopped, woken by NOTIFY, and purges old rows
every HOUSEKEEPING_INTERVAL."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from aio_pika.abc import AbstractExchange

from acme_orders.housekeeping import purge_all
from acme_orders.messaging import declare_exchange
from acme_orders.publisher.relay import listen_for_outbox, relay_outbox_batch
from acme_orders.runtime import open_connections, wait_any, wait_or_stop
from acme_orders.settings import Settings

logger = logging.getLogger(__name__)

SERVICE = "publisher"
# The first purge waits this long (or HOUSEKEEPING_INTERVAL, if shorter), so that a publisher
# starting with a backlog relays it first.
FIRST_HOUSEKEEPING_DELAY = 5.0


async def main(settings: Settings, stop: asyncio.Event) -> None:
    async with open_connections(settings, stop, SERVICE, pool_size=2) as connections:
        if connections is None:
            return
        channel = await connections.broker.channel(publisher_confirms=True)
        exchange = await declare_exchange(channel)
        logger.info("ready: relaying the outbox to %s", exchange.name)
        housekeeping = asyncio.create_task(
            housekeep_until_stopped(settings, connections.pool, stop)
        )
        try:
            await relay_until_stopped(settings, connections.pool, exchange, stop)
        finally:
            # A purge cut short is a rolled-back batch; the next run does it again.
            housekeeping.cancel()
            await asyncio.gather(housekeeping, return_exceptions=True)


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
