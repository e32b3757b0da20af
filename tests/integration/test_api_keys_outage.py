"""API keys while the database is away, in-process over ASGI, with the API's database
connections through a proxy the test hangs or cuts (the real PostgreSQL behind it): known keys are
let in for API_KEY_GRACE without each request waiting on the database, then 503; unknown keys 503,
never 401; once the database answers the keys are read again and revocations apply."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from fastapi import Depends

from acme_orders.core.settings import Settings
from acme_orders.ops.api_keys import Scope, create_key, new_token, revoke_key
from acme_orders.order_api.app import create_app
from acme_orders.order_api.security import Caller, authenticate
from tests.support.api import app_client
from tests.support.faults import HangingTcpProxy
from tests.support.waiting import wait_until


@asynccontextmanager
async def api_behind_a_proxy(
    settings: Settings, **overrides: object
) -> AsyncIterator[tuple[httpx.AsyncClient, HangingTcpProxy]]:
    """The API with its database connections through a proxy the test can hang, and a route of
    the test's own that needs a key and nothing else (no database): what it answers is what the
    key check decided."""
    database = urlsplit(settings.database_url)
    proxy = HangingTcpProxy(database.hostname or "127.0.0.1", database.port or 5432)
    await proxy.start()
    user, at, _ = database.netloc.rpartition("@")
    update = {
        "auth_disabled": False,
        "database_url": database._replace(netloc=f"{user}{at}127.0.0.1:{proxy.port}").geturl(),
        "api_db_acquire_timeout": 1.0,
    }
    app = create_app(settings.model_copy(update=update | overrides))

    @app.get("/test-only/who-am-i")
    async def who_am_i(caller: Annotated[Caller, Depends(authenticate)]) -> dict[str, object]:
        return {"key": caller.key.name if caller.key else None}

    try:
        async with app_client(app) as client:
            yield client, proxy
    finally:
        await proxy.stop()


async def test_while_the_database_is_away_known_keys_work_for_the_grace_then_503(
    settings: Settings, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="acme_orders.ops.api_keys")
    name = f"test-{secrets.token_hex(6)}"
    key = {"Authorization": f"Bearer {await create_key(pool, name, Scope.ORDERS_WRITE)}"}
    stranger = {"Authorization": f"Bearer {new_token()}"}
    async with api_behind_a_proxy(settings, api_key_cache_ttl=0.5, api_key_grace=4.0) as (
        api,
        database,
    ):
        assert (await api.get("/test-only/who-am-i", headers=key)).status_code == 200
        # Stuck, not gone: each try to connect waits for its timeout (API_DB_ACQUIRE_TIMEOUT).
        await database.hang()
        attempts_before = database.accepted

        async def tried_to_read() -> bool:
            response = await api.get("/test-only/who-am-i", headers=key)
            assert response.status_code == 200, response.text
            return database.accepted > attempts_before

        await wait_until(tried_to_read, deadline=5, what="a read of the keys to be tried")
        attempts_before = database.accepted
        statuses = [(await api.get("/test-only/who-am-i", headers=key)).status_code]
        for _ in range(20):
            statuses.append((await api.get("/test-only/who-am-i", headers=key)).status_code)
        unknown = await api.get("/test-only/who-am-i", headers=stranger)
        attempts = database.accepted - attempts_before

        async def past_grace() -> httpx.Response | None:
            response = await api.get("/test-only/who-am-i", headers=key)
            return response if response.status_code != 200 else None

        expired = await wait_until(past_grace, deadline=10, what="the grace time to run out")

        # The known key in grace: let in, and its requests did not each try the database.
        assert statuses == [200] * 21
        assert attempts <= 2, f"{attempts} connections tried for 21 requests"
        # A key the copy does not know may be a new one: not refused, but not let in either.
        assert unknown.status_code == 503, unknown.text
        assert "cannot be checked" in unknown.json()["detail"]
        assert int(unknown.headers["retry-after"]) >= 1
        assert expired.status_code == 503, expired.text
        assert "cannot be checked" in expired.json()["detail"]
        assert int(expired.headers["retry-after"]) >= 1
        # The operator is told when the grace begins and when it runs out, once each.
        logged = [record.getMessage() for record in caplog.records]
        assert sum("API_KEY_GRACE=" in line for line in logged) == 1, logged
        assert sum("every request with a key gets 503" in line for line in logged) == 1, logged


async def test_once_the_database_is_back_keys_are_read_again_and_revocations_apply(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    kept, revoked = f"test-{secrets.token_hex(6)}", f"test-{secrets.token_hex(6)}"
    kept_key = {"Authorization": f"Bearer {await create_key(pool, kept, Scope.ADMIN)}"}
    revoked_key = {"Authorization": f"Bearer {await create_key(pool, revoked, Scope.ADMIN)}"}
    async with api_behind_a_proxy(settings, api_key_cache_ttl=0.5, api_key_grace=1.0) as (
        api,
        database,
    ):
        assert (await api.get("/test-only/who-am-i", headers=revoked_key)).status_code == 200
        await database.cut()

        async def unavailable() -> httpx.Response | None:
            response = await api.get("/test-only/who-am-i", headers=kept_key)
            return response if response.status_code == 503 else None

        expired = await wait_until(unavailable, deadline=10, what="the grace time to run out")
        assert "cannot be checked" in expired.json()["detail"]
        # Revoked while the API could not see it.
        await revoke_key(pool, revoked)
        await database.restore()

        async def read_again() -> tuple[int, int] | None:
            statuses = (
                (await api.get("/test-only/who-am-i", headers=kept_key)).status_code,
                (await api.get("/test-only/who-am-i", headers=revoked_key)).status_code,
            )
            # Both answered from the copy read after the outage: the two requests of one probe
            # can straddle the read (the first 503, the second from the new copy).
            return statuses if 503 not in statuses else None

        # Within the TTL (the backoff never waits longer).
        after = await wait_until(read_again, deadline=5, what="the keys to be read again")

        assert after == (200, 401)
