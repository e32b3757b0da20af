"""What every service process shares: logging, the event loop, signals, start-up retries."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import uvloop
from aio_pika.abc import AbstractRobustConnection

from acme_orders.core.database import close_pool, create_pool
from acme_orders.core.messaging import connect
from acme_orders.core.observability.logs import (
    ContextFilter,
    LogFormat,
    log_formatter,
    resolve_log_format,
)
from acme_orders.core.observability.metrics_server import serve_metrics, service_health
from acme_orders.core.observability.tracing import configure_tracing
from acme_orders.core.settings import Settings, get_settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds to close a connection politely on the way out, before giving up on it.
CLOSE_TIMEOUT = 5.0

ServiceMain = Callable[[Settings, asyncio.Event], Awaitable[None]]


def configure_logging(service: str, level: str, log_format: LogFormat = "auto") -> None:
    """Log to stderr as `log_format` says (auto: text on a terminal, JSON elsewhere), each line
    with the service's name and the event, order and correlation ids of its log context."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        log_formatter(service, resolve_log_format(log_format, sys.stderr.isatty()))
    )
    handler.addFilter(ContextFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # aio-pika and aiormq narrate every reconnect attempt at INFO; we log our own summary.
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_service(service: str, main: ServiceMain) -> None:
    """Run one service until SIGTERM or SIGINT, which set the stop event it is given."""
    settings = get_settings()
    configure_logging(service, settings.log_level, settings.log_format)
    configure_tracing(service, settings)

    async def supervise() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        logger.info("starting")
        # /metrics and /health on the service's own port, from start-up (503 until connected).
        async with serve_metrics(settings, service):
            await main(settings, stop)
        logger.info("stopped")

    uvloop.run(supervise())


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (ours or not): used to tell the leftovers of a
    crashed run, named after its pid, from those of a run still going."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def retry_until_ready(
    connect: Callable[[], Awaitable[T]],
    what: str,
    stop: asyncio.Event,
    *,
    first_delay: float = 0.5,
    max_delay: float = 10.0,
    quiet: bool = False,
) -> T | None:
    """Call `connect` until it succeeds, backing off exponentially; None if asked to stop first.
    Each failed attempt is a warning, or with `quiet` (the caller has said what is going on) a
    debug line."""
    delay = first_delay
    while not stop.is_set():
        try:
            return await connect()
        # Broad on purpose: asyncpg and aiormq each raise their own classes for a server that is
        # down, starting or refusing us, and all of them mean "try again later" here.
        except Exception as exc:
            logger.log(
                logging.DEBUG if quiet else logging.WARNING,
                "%s not reachable (%r); retrying in %.1fs",
                what,
                exc,
                delay,
            )
        await wait_or_stop(stop, delay)
        delay = min(delay * 2, max_delay)
    return None


async def wait_any(*events: asyncio.Event, within: float | None = None) -> None:
    """Wait until one of the events is set, or `within` seconds pass."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`, returning early (True) when asked to stop."""
    await wait_any(stop, within=seconds)
    return stop.is_set()


@dataclass(frozen=True, slots=True)
class Connections:
    pool: asyncpg.Pool
    broker: AbstractRobustConnection


@asynccontextmanager
async def open_connections(
    settings: Settings, stop: asyncio.Event, service: str, *, pool_size: int | None = None
) -> AsyncIterator[Connections | None]:
    """A database pool and a RabbitMQ connection, each retried until its server answers; None
    when asked to stop before both are up. Both are closed on the way out."""
    pool = await retry_until_ready(
        lambda: create_pool(settings, max_size=pool_size), "PostgreSQL", stop
    )
    if pool is None:
        yield None
        return
    try:
        broker = await retry_until_ready(lambda: connect(settings, service), "RabbitMQ", stop)
        if broker is None:
            yield None
            return
        try:
            service_health.watch(pool, broker)
            try:
                yield Connections(pool, broker)
            finally:
                service_health.forget()
        finally:
            # Bounded: a connection stuck reconnecting must not keep the process from exiting.
            try:
                await asyncio.wait_for(broker.close(), CLOSE_TIMEOUT)
            except TimeoutError:
                logger.warning("RabbitMQ connection did not close in time; leaving it")
    finally:
        await close_pool(pool, CLOSE_TIMEOUT)
