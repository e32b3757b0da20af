"""Who may call the API: API keys as `Authorization: Bearer KEY`, their scopes, and the rate limits
on placing orders and on reading, each a bucket of its own.

401 (with `WWW-Authenticate: Bearer`) for a missing, unknown or revoked key; 403 for a key whose
scope does not allow the operation; 429 with `Retry-After` for a key over its rate; 503 with
`Retry-After` when the key cannot be checked because the database does not answer (see
ApiKeyCache: the keys last read are still let in for API_KEY_GRACE seconds). With
AUTH_DISABLED every request is let in as if it had every scope, and the rate limits count by the
client's address instead of its key.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from acme_orders.core.settings import Settings
from acme_orders.ops.api_keys import ApiKey, ApiKeyCache, ApiKeysUnavailableError, Scope
from acme_orders.order_api.rate_limit import TokenBucketLimiter

# auto_error=False: a missing or malformed header is ours to answer (401 with WWW-Authenticate;
# FastAPI's own answer is a 403). The scheme still shows in the OpenAPI document and /docs.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key made with `acme-orders apikey create NAME --scope SCOPE`.",
)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent the request: a recognised key, or anybody (AUTH_DISABLED)."""

    key: ApiKey | None
    # What the rate limit counts by.
    client: str

    @property
    def owner(self) -> int | None:
        """The key id that orders placed by this caller belong to (None: no key)."""
        return self.key.id if self.key else None

    @property
    def only_orders_of(self) -> int | None:
        """The key whose orders alone this caller may read; None when it may read every order
        (an admin key, or anybody with AUTH_DISABLED)."""
        if self.key is None or self.key.scope is Scope.ADMIN:
            return None
        return self.key.id


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach an address the API listens on. A name other than
    localhost could resolve to anything, so it counts as reachable from elsewhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def open_to_the_network(settings: Settings) -> bool:
    """An API without keys on an address others can reach: refused unless explicitly allowed."""
    return settings.auth_disabled and not is_loopback(settings.api_host)


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    settings: Settings = request.app.state.settings
    if settings.auth_disabled:
        address = request.client.host if request.client else "unknown"
        return Caller(None, client=f"address {address}")
    if credentials is None:
        raise unauthorized("an API key is required: send the header Authorization: Bearer KEY")
    keys: ApiKeyCache = request.app.state.api_keys
    try:
        key = await keys.find(credentials.credentials)
    except ApiKeysUnavailableError as exc:
        # Not a 401: the key may well be right, it just cannot be checked now.
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "API keys cannot be checked now (the database does not answer); retry after the "
            "time in Retry-After",
            headers={"Retry-After": str(math.ceil(exc.retry_after))},
        ) from exc
    if key is None:
        raise unauthorized("this API key is not valid (unknown or revoked)")
    return Caller(key, client=f"key {key.id}")


def require_scope(*allowed: Scope) -> Callable[..., Awaitable[Caller]]:
    async def check_scope(caller: Annotated[Caller, Depends(authenticate)]) -> Caller:
        if caller.key is not None and caller.key.scope not in allowed:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"API key {caller.key.name!r} has scope {caller.key.scope.value!r}; this needs "
                + " or ".join(repr(scope.value) for scope in allowed),
            )
        return caller

    return check_scope


def take_token(request: Request, caller: Caller, limit: str, what: str) -> Caller:
    """The caller, if it has a token left in the bucket of `app.state.<limit>` (None: no limit);
    otherwise 429 with Retry-After, saying too many `what`."""
    limiter: TokenBucketLimiter | None = getattr(request.app.state, limit)
    if limiter is not None:
        wait = limiter.take(caller.client)
        if wait > 0:
            who = "API key" if caller.key else "client address"
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"too many {what} from this {who}; retry after the time in Retry-After",
                # Whole seconds, as HTTP has it; never 0, which would invite an immediate retry.
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
    return caller


async def limit_order_rate(
    request: Request, caller: Annotated[Caller, Depends(require_scope(Scope.ORDERS_WRITE))]
) -> Caller:
    """Places orders: orders:write only (an admin key reads, it does not shop), rate limited."""
    return take_token(request, caller, "order_rate_limit", "orders")


async def limit_read_rate(
    request: Request,
    caller: Annotated[Caller, Depends(require_scope(Scope.ORDERS_WRITE, Scope.ADMIN))],
) -> Caller:
    """Reads orders (an orders:write key only its own) and the catalogue, rate limited in a
    bucket apart from placing orders: a client polling its orders does not use up its orders."""
    return take_token(request, caller, "read_rate_limit", "reads")
