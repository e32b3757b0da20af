"""A pool's connection that found its database read-only (25006, as after a failover to a
standby, or a database made read-only for maintenance) is discarded, so that the pool connects
afresh, to a primary or to a database writable again, instead of failing every write on it."""

from __future__ import annotations

import asyncpg
import pytest

from acme_orders.core.database import close_pool, create_pool
from tests.support.environment import ADMIN_DATABASE_URL, TestEnvironment
from tests.support.products import add_product


async def set_read_only(env: TestEnvironment, on: bool) -> None:
    admin = await asyncpg.connect(ADMIN_DATABASE_URL, timeout=10)
    try:
        template = (
            "ALTER DATABASE %I SET default_transaction_read_only = on"
            if on
            else "ALTER DATABASE %I RESET default_transaction_read_only"
        )
        statement = await admin.fetchval(f"SELECT format('{template}', $1::text)", env.name)
        await admin.execute(statement)
    finally:
        await admin.close()


async def test_a_connection_that_refused_a_write_as_read_only_is_replaced(
    fresh_env: TestEnvironment,
) -> None:
    await set_read_only(fresh_env, on=True)
    # One connection, opened while the database is read-only: a session keeps the default it
    # started with, whatever happens to the database's after. No minimum size: a pool that keeps
    # one reconnects the moment its connection is discarded, maybe before the RESET below.
    pool = await create_pool(fresh_env.settings(), min_size=0, max_size=1)
    try:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await add_product(pool, stock=1)
        await set_read_only(fresh_env, on=False)

        await add_product(pool, stock=1)
    finally:
        await close_pool(pool)
