"""The latency of every request of the API, for its metrics (routes/metrics.py serves them)."""

from __future__ import annotations

import time
from typing import Final

from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from acme_orders.core.observability.metrics import HTTP_REQUEST_SECONDS

UNMATCHED_ROUTE: Final = "unmatched"
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    """Observes how long each HTTP request took, by method, route template (`/orders/{order_id}`,
    never the id itself) and status code. Pure ASGI: no task and no request object per request,
    only a closure that notes the status on its way out."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Label children by (method, route, status), bound on first use: routes and statuses are
        # few, and a bound child skips prometheus_client's own lookup and lock.
        self.children: dict[tuple[str, str, int], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Unless a response starts, the server answers 500 (an error escaped the app).
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            self.observe(scope, status, time.perf_counter() - started)

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope["method"]
        # The router leaves the route it chose in the scope.
        route = getattr(scope.get("route"), "path_format", None) or UNMATCHED_ROUTE
        key = (method, route, status)
        child = self.children.get(key)
        if child is None:
            label = method if method in _METHODS else "other"
            child = self.children[key] = HTTP_REQUEST_SECONDS.labels(label, route, str(status))
        child.observe(seconds)
