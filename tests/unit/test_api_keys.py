"""API keys: their form, their hash, and the API's cache of them (with a fake pool and clock:
the cache's point is how often it goes to the database)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from acme_orders.ops.api_keys import NAME_PATTERN, PREFIX, ApiKey, ApiKeyCache, Scope, hash_token
from acme_orders.ops.api_keys import new_token as make_token


class FakePool:
    """Answers the cache's one query with the rows it is given, and counts the queries."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.queries = 0

    async def fetch(self, query: str, *args: object) -> list[dict[str, Any]]:
        self.queries += 1
        assert "revoked_at IS NULL" in query
        return list(self.rows)


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def row(key_id: int, token: str, scope: Scope = Scope.ORDERS_WRITE) -> dict[str, Any]:
    return {
        "id": key_id,
        "name": f"key-{key_id}",
        "scope": scope.value,
        "key_hash": hash_token(token),
    }


def cache(pool: FakePool, clock: Clock, ttl: float = 5.0) -> ApiKeyCache:
    return ApiKeyCache(pool, ttl, clock)  # type: ignore[arg-type]


def test_a_new_key_is_long_random_url_safe_and_recognisable() -> None:
    tokens = {make_token() for _ in range(100)}

    assert len(tokens) == 100
    for token in tokens:
        assert token.startswith(PREFIX)
        assert len(token) >= 20
        assert re.fullmatch(r"acme_[A-Za-z0-9_-]{43}", token)


def test_the_stored_hash_is_sha256_hex_and_not_the_key() -> None:
    token = make_token()

    digest = hash_token(token)

    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == hash_token(token)
    assert digest != hash_token(make_token())


@pytest.mark.parametrize("name", ["storefront", "ops.dashboard-2", "A", "x" * 64])
def test_key_names_that_are_allowed(name: str) -> None:
    assert NAME_PATTERN.match(name)


@pytest.mark.parametrize("name", ["", "-leading", "has space", "x" * 65, "a/b", "né"])
def test_key_names_that_are_not(name: str) -> None:
    assert not NAME_PATTERN.match(name)


async def test_the_cache_reads_the_keys_once_per_ttl_however_many_requests() -> None:
    token = make_token()
    pool, clock = FakePool([row(1, token)]), Clock()
    keys = cache(pool, clock)

    found = [await keys.find(token) for _ in range(1000)]
    clock.now += 4.9
    await keys.find(token)
    clock.now += 0.2
    await keys.find(token)

    assert found[0] == ApiKey(1, "key-1", Scope.ORDERS_WRITE)
    assert pool.queries == 2


async def test_unknown_keys_never_make_the_cache_read_the_database_again() -> None:
    pool, clock = FakePool([row(1, make_token())]), Clock()
    keys = cache(pool, clock)

    results = [await keys.find(make_token()) for _ in range(500)]
    results += [await keys.find("garbage" * 100) for _ in range(500)]

    assert results == [None] * 1000
    assert pool.queries == 1


async def test_a_key_revoked_in_the_database_is_refused_after_the_ttl() -> None:
    token = make_token()
    pool, clock = FakePool([row(1, token, Scope.ADMIN)]), Clock()
    keys = cache(pool, clock)
    assert await keys.find(token) is not None

    pool.rows = []  # revoked: no longer among the active keys
    clock.now += 4.0
    still_cached = await keys.find(token)
    clock.now += 1.0
    refused = await keys.find(token)

    assert still_cached is not None
    assert refused is None
