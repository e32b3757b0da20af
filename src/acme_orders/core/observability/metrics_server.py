"""Each worker's small HTTP server: `/metrics` for Prometheus and `/health` for docker compose,
load balancers and people.

It runs inside the worker's event loop (uvicorn's server, without its signal handling: the
service's own SIGTERM handling stops it), on the port of the service's `<SERVICE>_METRICS_PORT`
setting at METRICS_HOST; port 0 turns it off. A port already taken is logged and the worker runs on
without it: metrics must never stop the pipeline. /health answers 200 once the service's database
pool and broker connection are open and answering, 503 before that and while either is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Generator
from typing import Any

import asyncpg
import orjson
import uvicorn
from aio_pika.abc import AbstractRobustConnection
from prometheus_client import make_asgi_app
from starlette.types import ASGIApp, Receive, Scope, Send

from acme_orders.core.settings import Settings

logger = logging.getLogger(__name__)

# Seconds /health gives the database to answer before it says it is down.
HEALTH_TIMEOUT = 2.0


def metrics_port(settings: Settings, service: str) -> int:
    """The port of a worker's metrics server; 0 (none) for a service without a setting."""
    ports = {
        "publisher": settings.publisher_metrics_port,
        "inventory": settings.inventory_metrics_port,
        "payment": settings.payment_metrics_port,
        "notification": settings.notification_metrics_port,
    }
    return ports.get(service, 0)


class ServiceHealth:
    """The connections of this process's service, while they are open: what /health checks."""

    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None
        self.broker: AbstractRobustConnection | None = None

    def watch(self, pool: asyncpg.Pool, broker: AbstractRobustConnection) -> None:
        self.pool, self.broker = pool, broker

    def forget(self) -> None:
        self.pool = self.broker = None

    async def check(self) -> dict[str, str]:
        """`status` ok or unavailable, and the state of each connection."""
        database = "down"
        if self.pool is not None:
            try:
                async with asyncio.timeout(HEALTH_TIMEOUT):
                    await self.pool.fetchval("SELECT 1")
                database = "up"
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pass
        broker = self.broker
        broker_up = broker is not None and not broker.is_closed and broker.connected.is_set()
        return {
            "status": "ok" if database == "up" and broker_up else "unavailable",
            "database": database,
            "broker": "up" if broker_up else "down",
        }


# One service per process: open_connections (runtime.py) tells it about the connections.
service_health = ServiceHealth()


def worker_app(health: ServiceHealth) -> ASGIApp:
    """GET /metrics (the Prometheus exposition of this process) and GET /health; 404 for
    anything else."""
    metrics = make_asgi_app()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/metrics":
            await metrics(scope, receive, send)
        elif path == "/health":
            state = await health.check()
            await _send_json(send, 200 if state["status"] == "ok" else 503, state)
        else:
            await _send_json(send, 404, {"detail": "not found: this server has /metrics, /health"})

    return app


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    content = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


class _ServerInTheServicesLoop(uvicorn.Server):
    """uvicorn's server as one task among the service's: it leaves the signals to the service,
    and waits for its stop without polling (uvicorn's own main loop wakes up ten times a
    second)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.stopping = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def main_loop(self) -> None:
        await self.stopping.wait()

    def stop(self) -> None:
        self.should_exit = True
        self.stopping.set()


@contextlib.asynccontextmanager
async def serve_metrics(settings: Settings, service: str) -> AsyncIterator[None]:
    """Serve /metrics and /health on the service's metrics port while the block runs."""
    host, port = settings.metrics_host, metrics_port(settings, service)
    if port == 0:
        yield
        return
    try:
        # Bound here, not by uvicorn, which exits the process when it cannot bind.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        logger.error(
            "cannot serve /metrics and /health on %s:%d (%s); running without them", host, port, exc
        )
        yield
        return
    config = uvicorn.Config(
        worker_app(service_health),
        lifespan="off",
        interface="asgi3",
        ws="none",
        log_config=None,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=2,
    )
    server = _ServerInTheServicesLoop(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    logger.info("metrics on http://%s:%d/metrics, health on /health", host, port)
    try:
        yield
    finally:
        server.stop()
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
        if isinstance(outcome, BaseException):
            logger.warning("metrics server stopped with %r", outcome)
        sock.close()
