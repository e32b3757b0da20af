"""The API process: uvicorn serving the app."""

from __future__ import annotations

import uvicorn

from acme_orders.observability.tracing import configure_tracing
from acme_orders.runtime import configure_logging
from acme_orders.settings import get_settings

SERVICE = "api"


def run() -> None:
    settings = get_settings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
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
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
    )
