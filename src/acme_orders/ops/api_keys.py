"""API keys: made, listed and revoked by the operator, recognised by the API on every request.

A key is `acme_` and 43 random URL-safe characters (32 bytes from `secrets`). The database keeps
only its SHA-256 hex digest. A fast, unsalted hash is right here, unlike for passwords: the key is
256 random bits, so there is no dictionary to try and a salt or a slow hash would protect nothing,
while it would cost every request its time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg

from acme_orders.core.database import Connection, is_transient

logger = logging.getLogger(__name__)

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


class ApiKeysUnavailableError(Exception):
    """A key cannot be checked now: the database does not answer, and the last copy of the keys
    does not know this one or is past its grace time (or there is none yet). Not a wrong key: the
    caller should retry after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"API keys cannot be checked; retry in {retry_after:g}s")
        self.retry_after = retry_after


class Snapshot(StrEnum):
    """How far the cache's copy of the keys can be trusted."""

    # Read less than `ttl` ago: it says which keys are active.
    FRESH = "fresh"
    # Older, but not past the grace time: the keys it knows are still let in (a key is not
    # revoked because the database is away); a key it does not know cannot be judged.
    IN_GRACE = "in grace"
    # Never read, or past the grace time: no key can be judged.
    EXPIRED = "expired"


def snapshot_state(age: float, ttl: float, grace: float) -> Snapshot:
    """What a copy of the keys read `age` seconds ago (inf: never) is worth."""
    if age < ttl:
        return Snapshot.FRESH
    if age < ttl + grace:
        return Snapshot.IN_GRACE
    return Snapshot.EXPIRED


# Seconds before the first retry after a failed read; each failure in a row doubles it.
FIRST_RETRY = 0.5


def retry_delay(failures: int, ttl: float) -> float:
    """Seconds to wait after `failures` failed reads in a row before the next one: a few quick
    tries (a blip is over soon), then one every `ttl`, the rate of reads when all is well. Never
    more than `ttl`, so that once the database answers again a revocation takes effect within
    about the usual `ttl`, not after a long backoff."""
    # The exponent capped: days of failures must not overflow a float.
    return min(ttl, FIRST_RETRY * (1 << min(max(0, failures - 1), 30)))


class ApiKeyCache:
    """The active keys, by hash, as the API checks them: no database round trip per request.

    The whole table of active keys is read at once (operators make keys by hand: there are few)
    and read again once it is `ttl` seconds old. So a key created or revoked takes effect within
    `ttl` seconds, and a request with a key the fresh copy does not know never reaches the
    database, however many of them come.

    One read at a time (single flight), bounded by `timeout`: the request that starts it waits
    for it, and so does a request the current copy cannot answer; every other request answers
    from the copy. A failed read is retried after a backoff (`retry_delay`), not by the next
    request. While reads fail, the keys of the last copy are still let in for `grace` seconds
    past its `ttl`, and keys it does not know get ApiKeysUnavailableError (503), not "unknown"
    (401); past the grace, every key gets ApiKeysUnavailableError until a read succeeds."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        grace: float = 0.0,
        timeout: float = 2.0,
    ) -> None:
        self.pool = pool
        self.ttl = ttl
        self.grace = grace
        self.timeout = timeout
        self.clock = clock
        self._by_hash: dict[str, ApiKey] = {}
        self._read_at = -float("inf")
        self._reading: asyncio.Task[None] | None = None
        self._failures = 0
        self._retry_at = -float("inf")
        # The last state an operator was told about, so that each change is logged once.
        self._told: Snapshot = Snapshot.FRESH

    @property
    def failures(self) -> int:
        """Failed reads in a row (0 once a read succeeds)."""
        return self._failures

    async def find(self, token: str) -> ApiKey | None:
        """The active key this token is, or None; ApiKeysUnavailableError when that cannot be
        known."""
        if len(token) > _MAX_TOKEN_LENGTH or not token.startswith(PREFIX):
            return None
        # A dict lookup is not constant-time, but what it compares is a SHA-256 of the token:
        # timing can tell an attacker about hashes, which says nothing about any key.
        digest = hash_token(token)
        state = self._state()
        if state is not Snapshot.FRESH:
            started = self._start_reading()
            reading = self._reading
            unanswerable = state is Snapshot.EXPIRED or digest not in self._by_hash
            if reading is not None and (started or unanswerable):
                # shield: a request that goes away does not cancel the read the others share.
                await asyncio.shield(reading)
                state = self._state()
        self._tell(state)
        key = self._by_hash.get(digest)
        if state is Snapshot.FRESH or (state is Snapshot.IN_GRACE and key is not None):
            return key
        raise ApiKeysUnavailableError(max(1.0, self._retry_at - self.clock()))

    async def close(self) -> None:
        """Wait for a read under way (bounded by `timeout`), so that none outlives the pool."""
        if self._reading is not None:
            await asyncio.shield(self._reading)

    def _state(self) -> Snapshot:
        return snapshot_state(self.clock() - self._read_at, self.ttl, self.grace)

    def _start_reading(self) -> bool:
        """Start a read unless one is under way or the backoff says not yet; True if started."""
        if self._reading is not None or self.clock() < self._retry_at:
            return False
        self._reading = asyncio.create_task(self._read(), name="read API keys")
        return True

    async def _read(self) -> None:
        started = self.clock()
        try:
            async with asyncio.timeout(self.timeout):
                rows = await self.pool.fetch(
                    "SELECT id, name, scope, key_hash FROM api_keys WHERE revoked_at IS NULL"
                )
            by_hash = {r["key_hash"]: ApiKey(r["id"], r["name"], Scope(r["scope"])) for r in rows}
        except Exception as exc:
            # Whatever went wrong, the keys already known are worth more than a refusal of every
            # request; what is not an outage (a broken schema, a bug) is logged with its traceback.
            self._failures += 1
            delay = retry_delay(self._failures, self.ttl)
            self._retry_at = self.clock() + delay
            if self._failures == 1:
                logger.warning(
                    "could not read the API keys (%r); trying again with backoff (at most every "
                    "%gs), first in %gs",
                    exc,
                    self.ttl,
                    delay,
                    exc_info=not is_transient(exc),
                )
            else:
                logger.info("still cannot read the API keys (%r); next try in %gs", exc, delay)
            return
        finally:
            self._reading = None
        self._by_hash = by_hash
        # From before the query: a key revoked while it ran is caught by the next read.
        self._read_at = started
        if self._failures:
            logger.warning(
                "API keys read again after %d failed tries: keys are checked as usual",
                self._failures,
            )
        self._failures = 0
        self._retry_at = -float("inf")

    def _tell(self, state: Snapshot) -> None:
        """Log when the keys start being served from the grace time, and when it runs out."""
        if state is self._told:
            return
        if state is Snapshot.IN_GRACE and self._failures:
            logger.warning(
                "the database does not answer: letting in the %d API keys last read, for at most "
                "API_KEY_GRACE=%gs more; keys not among them get 503",
                len(self._by_hash),
                self.grace - (self.clock() - self._read_at - self.ttl),
            )
        elif state is Snapshot.EXPIRED and self._failures:
            logger.error(
                "the API keys have not been read for longer than API_KEY_CACHE_TTL + "
                "API_KEY_GRACE (or not since the API started): every request with a key gets 503 "
                "until the database answers"
            )
        elif state is not Snapshot.FRESH:
            return  # a read is merely due, or the API has just started: nothing to tell
        self._told = state
