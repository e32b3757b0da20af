"""API keys: their form, their hash, and the API's cache of them (with a fake pool and clock:
the cache's point is how often it goes to the database)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

import pytest

from acme_orders.ops.api_keys import (
    NAME_PATTERN,
    PREFIX,
    ApiKey,
    ApiKeyCache,
    ApiKeysUnavailableError,
    Scope,
    Snapshot,
    hash_token,
    retry_delay,
    snapshot_state,
)
from acme_orders.ops.api_keys import new_token as make_token


class FakePool:
    """Answers the cache's one query with the rows it is given, and counts the queries; with
    `down` set, fails them as an unreachable server would."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.queries = 0
        self.down = False

    async def fetch(self, query: str, *args: object) -> list[dict[str, Any]]:
        self.queries += 1
        assert "revoked_at IS NULL" in query
        if self.down:
            raise ConnectionRefusedError("the database is away")
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


def cache(pool: FakePool, clock: Clock, ttl: float = 5.0, grace: float = 0.0) -> ApiKeyCache:
    return ApiKeyCache(pool, ttl, clock, grace=grace)  # type: ignore[arg-type]


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


@pytest.mark.parametrize(
    ("age", "state"),
    [
        (0.0, Snapshot.FRESH),
        (4.99, Snapshot.FRESH),
        (5.0, Snapshot.IN_GRACE),
        (304.99, Snapshot.IN_GRACE),
        (305.0, Snapshot.EXPIRED),
        (float("inf"), Snapshot.EXPIRED),
    ],
)
def test_a_copy_of_the_keys_is_fresh_for_the_ttl_then_in_grace_then_expired(
    age: float, state: Snapshot
) -> None:
    assert snapshot_state(age, ttl=5.0, grace=300.0) is state


def test_without_grace_a_stale_copy_is_expired() -> None:
    assert snapshot_state(5.0, ttl=5.0, grace=0.0) is Snapshot.EXPIRED


def test_retries_back_off_exponentially_up_to_the_ttl() -> None:
    delays = [retry_delay(failures, ttl=5.0) for failures in range(1, 8)]

    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert retry_delay(3, ttl=0.2) == 0.2


async def test_while_the_database_is_away_known_keys_are_let_in_for_the_grace_time() -> None:
    token = make_token()
    pool, clock = FakePool([row(1, token)]), Clock()
    keys = cache(pool, clock, grace=60.0)
    assert await keys.find(token) is not None

    pool.down = True
    clock.now += 5.0
    in_grace = [await keys.find(token) for _ in range(100)]
    clock.now += 59.9
    last_of_grace = await keys.find(token)
    clock.now += 0.1
    with pytest.raises(ApiKeysUnavailableError) as past_grace:
        await keys.find(token)

    assert in_grace == [ApiKey(1, "key-1", Scope.ORDERS_WRITE)] * 100
    assert last_of_grace is not None
    assert past_grace.value.retry_after >= 1


async def test_while_the_database_is_away_an_unknown_key_is_unavailable_not_wrong() -> None:
    pool, clock = FakePool([row(1, make_token())]), Clock()
    keys = cache(pool, clock, grace=60.0)
    await keys.find(make_token())

    pool.down = True
    clock.now += 5.0

    with pytest.raises(ApiKeysUnavailableError):
        await keys.find(make_token())


async def test_failed_reads_are_retried_with_backoff_not_by_every_request() -> None:
    token = make_token()
    pool, clock = FakePool([row(1, token)]), Clock()
    keys = cache(pool, clock, grace=60.0)
    await keys.find(token)
    pool.down = True
    clock.now += 5.0

    for _ in range(80):  # 8 s of requests, 10 a second
        await keys.find(token)
        clock.now += 0.1

    # 1 good read, then 800 requests and reads at 5, 5.5, 6.5, 8.5 and 12.5 s (0.5, 1, 2, 4 apart).
    assert pool.queries == 6
    assert keys.failures == 5


async def test_once_the_database_answers_again_a_revocation_takes_effect_within_the_ttl() -> None:
    token = make_token()
    pool, clock = FakePool([row(1, token)]), Clock()
    keys = cache(pool, clock, grace=300.0)
    await keys.find(token)
    pool.down = True
    for _ in range(100):  # a long outage: the backoff has reached its ceiling
        clock.now += 1.0
        await keys.find(token)

    pool.down, pool.rows = False, []
    clock.now += 5.0
    after_ttl = await keys.find(token)

    assert after_ttl is None
    assert keys.failures == 0


async def test_one_read_at_a_time_and_requests_with_known_keys_do_not_wait_for_it() -> None:
    token = make_token()
    pool, clock = FakePool([row(1, token)]), Clock()
    keys = cache(pool, clock, grace=60.0)
    await keys.find(token)
    released = asyncio.Event()

    async def slow_fetch(query: str, *args: object) -> list[dict[str, Any]]:
        pool.queries += 1
        await released.wait()
        return []

    pool.fetch = slow_fetch  # type: ignore[method-assign]
    clock.now += 5.0
    first = asyncio.create_task(keys.find(token))
    await asyncio.sleep(0)
    others = [await keys.find(token) for _ in range(50)]
    released.set()
    after_read = await first

    assert pool.queries == 2
    assert others == [ApiKey(1, "key-1", Scope.ORDERS_WRITE)] * 50
    assert after_read is None  # the read it waited for no longer has the key


async def test_serving_from_grace_and_its_end_are_logged_once_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = make_token()
    pool, clock = FakePool([row(1, token)]), Clock()
    keys = cache(pool, clock, grace=10.0)
    await keys.find(token)
    pool.down = True
    caplog.set_level(logging.WARNING, logger="acme_orders.ops.api_keys")

    for _ in range(200):
        clock.now += 0.1
        with contextlib.suppress(ApiKeysUnavailableError):
            await keys.find(token)

    messages = [record.getMessage() for record in caplog.records]
    assert sum("API_KEY_GRACE=" in message for message in messages) == 1
    assert sum("every request with a key gets 503" in message for message in messages) == 1


async def test_a_read_that_fails_for_another_reason_also_keeps_the_known_keys_and_backs_off() -> (
    None
):
    token = make_token()
    pool, clock = FakePool([row(1, token)]), Clock()
    keys = cache(pool, clock, grace=60.0)
    await keys.find(token)

    # A scope this process does not know (written by a newer version, say): not an outage.
    pool.rows = [row(1, token) | {"scope": "no-such-scope"}]
    clock.now += 5.0
    found = [await keys.find(token) for _ in range(10)]

    assert found == [ApiKey(1, "key-1", Scope.ORDERS_WRITE)] * 10
    assert pool.queries == 2
    assert keys.failures == 1
