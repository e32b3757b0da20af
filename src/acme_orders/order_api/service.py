"""The API process: uvicorn serving the app."""

from __future__ import annotations

import logging

import uvicorn

from acme_orders.core import topology
from acme_orders.core.observability.tracing import configure_tracing
from acme_orders.core.runtime import configure_logging
from acme_orders.core.settings import Settings, get_settings
from acme_orders.order_api.security import open_to_the_network

SERVICE = topology.API

logger = logging.getLogger(__name__)


def may_listen(settings: Settings) -> bool:
    """False, having said why, for an API that would serve anyone without a key on an address
    other machines can reach, unless AUTH_DISABLED_ALLOW_REMOTE says that is intended."""
    if not open_to_the_network(settings):
        return True
    if settings.auth_disabled_allow_remote:
        logger.warning(
            "AUTH_DISABLED on API_HOST %s, which is not a loopback address, as "
            "AUTH_DISABLED_ALLOW_REMOTE allows: whoever can reach this address may place and read "
            "orders without a key",
            settings.api_host,
        )
        return True
    logger.error(
        "refusing to start: AUTH_DISABLED would serve anyone without a key on API_HOST %s, which "
        "is not a loopback address. Turn keys on (AUTH_DISABLED=0), listen on 127.0.0.1, or set "
        "AUTH_DISABLED_ALLOW_REMOTE=1 if something else decides who can reach it",
        settings.api_host,
    )
    return False


def run() -> int:
    settings = get_settings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    if not may_listen(settings):
        return 1
    configure_tracing(SERVICE, settings)
    # uvicorn handles SIGTERM itself: it stops accepting, finishes in-flight requests, then runs
    # the lifespan's shutdown, which closes the pool.
    uvicorn.run(
        "acme_orders.order_api.app:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        # A bound on the work this process takes on: past it uvicorn answers 503 at once, before
        # the app, rather than letting requests pile up in memory and wait for the pool.
        limit_concurrency=settings.api_limit_concurrency,
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
    )
    return 0
