"""API keys: made, listed and revoked by the operator, recognised by the API on every request.

A key is `acme_` and 43 random URL-safe characters (32 bytes from `secrets`). The database keeps
only its SHA-256 hex digest. A fast, unsalted hash is right here, unlike for passwords: the key is
256 random bits, so there is no dictionary to try and a salt or a slow hash would protect nothing,
while it would cost every request its time.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg

from acme_orders.core.database import Connection

PREFIX = "acme_"
# What a name may be: also a CHECK in db/003_api_keys.sql.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Longer than any key we make: a header of a kilobyte is not worth hashing.
_MAX_TOKEN_LENGTH = 128

# Each operation is one statement: a pool, or a connection in the caller's transaction.
Executor = asyncpg.Pool | Connection


class Scope(StrEnum):
    # Places orders and reads the orders it placed.
    ORDERS_WRITE = "orders:write"
    # Reads every order, and what operators see.
    ADMIN = "admin"
    # Reads the API's metrics and nothing else: what Prometheus scrapes with.
    METRICS = "metrics"


class ApiKeyError(Exception):
    """An operator's request about keys that cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """Who a request comes from, once its key is recognised."""

    id: int
    name: str
    scope: Scope


@dataclass(frozen=True, slots=True)
class KeyListing:
    name: str
    scope: Scope
    created_at: datetime
    revoked_at: datetime | None


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_key(conn: Executor, name: str, scope: Scope) -> str:
    """Store a new key under `name` and return it: the only time it is ever seen whole."""
    if not NAME_PATTERN.match(name):
        raise ApiKeyError(
            f"{name!r} is not a valid key name: 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    token = new_token()
    created = await conn.fetchval(
        """
        INSERT INTO api_keys (name, scope, key_hash) VALUES ($1, $2, $3)
        ON CONFLICT (name) DO NOTHING
        RETURNING true
        """,
        name,
        scope.value,
        hash_token(token),
    )
    if not created:
        raise ApiKeyError(
            f"an API key named {name!r} already exists (names are never reused); choose another"
        )
    return token


async def list_keys(conn: Executor) -> list[KeyListing]:
    rows = await conn.fetch(
        "SELECT name, scope, created_at, revoked_at FROM api_keys ORDER BY created_at, name"
    )
    return [
        KeyListing(r["name"], Scope(r["scope"]), r["created_at"], r["revoked_at"]) for r in rows
    ]


@dataclass(frozen=True, slots=True)
class Revocation:
    revoked_at: datetime
    # True when the key had been revoked before: nothing changed.
    already: bool


async def revoke_key(conn: Executor, name: str) -> Revocation:
    """Revoke the key named `name`; revoking it again changes nothing."""
    row = await conn.fetchrow(
        """
        WITH target AS (SELECT id, revoked_at FROM api_keys WHERE name = $1 FOR UPDATE)
        UPDATE api_keys AS k SET revoked_at = coalesce(target.revoked_at, clock_timestamp())
        FROM target WHERE k.id = target.id
        RETURNING k.revoked_at, target.revoked_at IS NOT NULL AS already
        """,
        name,
    )
    if row is None:
        raise ApiKeyError(f"no API key is named {name!r} (see `acme-orders apikey list`)")
    return Revocation(row["revoked_at"], row["already"])


class ApiKeyCache:
    """The active keys, by hash, as the API checks them: no database round trip per request.

    The whole table of active keys is read at once (operators make keys by hand: there are few)
    and read again by the first request after `ttl` seconds. So a key created or revoked takes
    effect within `ttl` seconds, and a request with an unknown key never reaches the database,
    however many of them come."""

    def __init__(
        self, pool: asyncpg.Pool, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.pool = pool
        self.ttl = ttl
        self.clock = clock
        self._by_hash: dict[str, ApiKey] = {}
        self._read_at = -float("inf")
        self._reading = asyncio.Lock()

    async def find(self, token: str) -> ApiKey | None:
        """The active key this token is, or None."""
        if self._stale():
            await self._read()
        if len(token) > _MAX_TOKEN_LENGTH or not token.startswith(PREFIX):
            return None
        # A dict lookup is not constant-time, but what it compares is a SHA-256 of the token:
        # timing can tell an attacker about hashes, which says nothing about any key.
        return self._by_hash.get(hash_token(token))

    def _stale(self) -> bool:
        return self.clock() - self._read_at >= self.ttl

    async def _read(self) -> None:
        async with self._reading:
            if not self._stale():
                return  # another request read them while this one waited
            started = self.clock()
            rows = await self.pool.fetch(
                "SELECT id, name, scope, key_hash FROM api_keys WHERE revoked_at IS NULL"
            )
            self._by_hash = {
                r["key_hash"]: ApiKey(r["id"], r["name"], Scope(r["scope"])) for r in rows
            }
            # From before the query: a key revoked while it ran is caught by the next read.
            self._read_at = started
