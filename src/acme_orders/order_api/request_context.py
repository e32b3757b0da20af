"""Every request's id: the client's `X-Request-ID` when it sent a sane one, else a new one. It is
returned in the response's `X-Request-ID`, carried on every log line of the request, and becomes
the correlation id of the order the request places, which every later event of that order carries
on. When tracing, the request also gets its server span here.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, which runs the app in a task of its own and
costs every request noticeably more.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from acme_orders.core.events import CORRELATION_ID_PATTERN
from acme_orders.core.observability import tracing
from acme_orders.core.observability.logs import log_context

HEADER: Final = b"x-request-id"
# Where the middleware leaves the id for the routes, in the request's ASGI scope.
SCOPE_KEY: Final = "acme.request_id"
# A client's id is kept only if it is a valid correlation id: bounded, and a plain token that
# cannot forge a log line.
_SANE = re.compile(CORRELATION_ID_PATTERN.encode())


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's X-Request-ID if it is sane, else a new id."""
    for name, value in headers:
        if name == HEADER:
            if _SANE.fullmatch(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


class RequestContext:
    """Gives each HTTP request its id (see the module), its log context and, when tracing, its
    server span."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope["headers"])
        scope[SCOPE_KEY] = request_id
        echoed = (HEADER, request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), echoed]}
            await send(message)

        with log_context(correlation_id=request_id):
            if tracing.is_enabled():
                await self.traced(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)

    async def traced(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        with tracing.serving(method, scope["headers"]) as span:

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                # Named after the route once routing has found it ("POST /orders"), so that one
                # name covers every order, not one per order id.
                route = getattr(scope.get("route"), "path", None)
                if isinstance(route, str):
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("url.path", scope["path"])
