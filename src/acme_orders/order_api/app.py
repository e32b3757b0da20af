"""The FastAPI application: lifespan, limits, error handling."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from acme_orders import __version__
from acme_orders.core.database import DATABASE_ERRORS, close_pool, create_pool, is_transient
from acme_orders.core.observability.metrics import export_api_metrics
from acme_orders.core.settings import Settings, get_settings
from acme_orders.ops.api_keys import ApiKeyCache
from acme_orders.order_api.body_limit import BodySizeLimit
from acme_orders.order_api.http_metrics import HttpMetrics
from acme_orders.order_api.rate_limit import TokenBucketLimiter
from acme_orders.order_api.request_context import RequestContext
from acme_orders.order_api.routes.board import board
from acme_orders.order_api.routes.board_dead_letters import (
    DEAD_LETTER_CALLS_BURST,
    DEAD_LETTER_CALLS_PER_SECOND,
    board_dead_letters,
)
from acme_orders.order_api.routes.docs import docs
from acme_orders.order_api.routes.health import health
from acme_orders.order_api.routes.metrics import metrics
from acme_orders.order_api.routes.orders import orders
from acme_orders.order_api.routes.products import products
from acme_orders.order_api.routes.timeline import timeline
from acme_orders.order_api.store import OrderWriter, PriceBook

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Every request waits a bounded time for a connection and each statement a bounded time
        # for the server: past either the answer is a 503 (database_unavailable), so that an
        # overload or a held lock turns into quick refusals the client retries, not a queue.
        app.state.pool = await create_pool(
            settings,
            min_size=0,
            acquire_timeout=settings.api_db_acquire_timeout,
            statement_timeout=settings.api_statement_timeout,
        )
        # A read of the keys waits no longer than a request waits for a connection.
        app.state.api_keys = ApiKeyCache(
            app.state.pool,
            settings.api_key_cache_ttl,
            grace=settings.api_key_grace,
            timeout=settings.api_db_acquire_timeout,
        )
        app.state.price_book = PriceBook()
        app.state.order_writer = OrderWriter(
            app.state.pool,
            max_batch=settings.api_insert_batch,
            in_flight=settings.api_inserts_in_flight,
            # Every connection of the pool may hold an insert stuck behind a lock, as every one
            # could hold an order's insert before orders were grouped.
            most_in_flight=settings.db_pool_size,
        )
        log_access_policy(settings)
        try:
            yield
        finally:
            await app.state.api_keys.close()
            await app.state.order_writer.close()
            await close_pool(app.state.pool)

    app = FastAPI(
        title="Acme Orders",
        version=__version__,
        description=(
            "Place orders and follow them through inventory, payment and notification. "
            "An order is stored with its OrderPlaced event in one transaction; the rest of the "
            "pipeline reacts to events."
        ),
        lifespan=lifespan,
        # Swagger UI is served by docs_routes, from a pinned package, not from FastAPI's CDN: the
        # page works without internet access, under a strict Content-Security-Policy. No ReDoc.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    export_api_metrics()
    app.state.order_rate_limit = (
        TokenBucketLimiter(settings.rate_limit_orders_per_second, settings.rate_limit_burst)
        if settings.rate_limit_orders_per_second > 0
        else None
    )
    app.state.read_rate_limit = (
        TokenBucketLimiter(settings.rate_limit_reads_per_second, settings.rate_limit_reads_burst)
        if settings.rate_limit_reads_per_second > 0
        else None
    )
    # Always on, whatever the other limits say: each call holds a DLQ's messages while it runs.
    app.state.dead_letter_rate_limit = TokenBucketLimiter(
        DEAD_LETTER_CALLS_PER_SECOND, DEAD_LETTER_CALLS_BURST
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    # Outside the body limit, so that its 413s are timed and counted too.
    app.add_middleware(HttpMetrics)
    # Outermost: every response carries X-Request-ID, and every log line of the request (those
    # of the middlewares inside included) its correlation id.
    app.add_middleware(RequestContext)
    app.include_router(orders)
    app.include_router(products)
    app.include_router(health)
    app.include_router(timeline)
    app.include_router(board)
    app.include_router(board_dead_letters)
    app.include_router(docs)
    app.include_router(metrics)

    # database.is_transient tells which of them are an outage (503 with Retry-After); the rest
    # stay errors (500).
    for error in DATABASE_ERRORS:
        app.add_exception_handler(error, database_unavailable)
    return app


def log_access_policy(settings: Settings) -> None:
    if settings.auth_disabled:
        logger.warning(
            "AUTH_DISABLED is set: the API accepts requests without an API key, from anyone who "
            "can reach it. Fine for trying it out on your machine; for anything else unset "
            "AUTH_DISABLED and create keys with `acme-orders apikey create`."
        )
    else:
        logger.info(
            "API keys required (Authorization: Bearer KEY); key changes take effect within %gs; "
            "while the database is away the keys last read are let in for %gs more",
            settings.api_key_cache_ttl,
            settings.api_key_grace,
        )
    if settings.rate_limit_orders_per_second > 0:
        logger.info(
            "POST /orders limited to %g/s per %s (bursts of %d), in this process",
            settings.rate_limit_orders_per_second,
            "client address" if settings.auth_disabled else "API key",
            settings.rate_limit_burst,
        )
    else:
        logger.info("POST /orders is not rate limited (RATE_LIMIT_ORDERS_PER_SECOND=0)")
    if settings.rate_limit_reads_per_second > 0:
        logger.info(
            "reads limited to %g/s per %s (bursts of %d), in this process",
            settings.rate_limit_reads_per_second,
            "client address" if settings.auth_disabled else "API key",
            settings.rate_limit_reads_burst,
        )
    else:
        logger.info("reads are not rate limited (RATE_LIMIT_READS_PER_SECOND=0)")


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    if not is_transient(exc):
        # Not an outage: a bug or a broken schema, answered 500 like any other error.
        raise exc
    logger.warning("database unavailable: %s", describe_unavailable(exc))
    return JSONResponse(
        {"detail": UNAVAILABLE},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "1"},
    )


UNAVAILABLE = (
    "the database is unavailable or busy; nothing was stored. Retry after Retry-After seconds; "
    "retry POST /orders with the same Idempotency-Key, so that it is placed once"
)


def describe_unavailable(exc: Exception) -> str:
    """What an operator needs from the log line: a bare TimeoutError says nothing by itself."""
    if isinstance(exc, asyncpg.QueryCanceledError):
        return f"statement cancelled after API_STATEMENT_TIMEOUT or by an operator ({exc})"
    if type(exc) is TimeoutError:
        return (
            "timed out: no database connection came free within API_DB_ACQUIRE_TIMEOUT "
            "(every one of DB_POOL_SIZE busy), or connecting or a query took too long"
        )
    return repr(exc)
