"""The PostgreSQL pair of tests/support/postgres_pair.py: the standby is synchronous, a
committed row survives a kill -9 of the primary and the promotion of the standby, and asyncpg,
given the libpq multi-host DSN, finds whichever server is the primary."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support.clusters import ClusterEnvironment, PostgresPair
from tests.support.waiting import wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture
async def database(postgres_pair: PostgresPair) -> AsyncIterator[str]:
    """A database of the test's own, with one table."""
    name = f"acme_pair_{secrets.token_hex(4)}"
    await postgres_pair.create_database(name)
    conn = await asyncpg.connect(postgres_pair.dsn(name))
    try:
        await conn.execute("CREATE TABLE rows (id int PRIMARY KEY, note text NOT NULL)")
    finally:
        await conn.close()
    yield name
    await postgres_pair.heal()
    await postgres_pair.drop_database(name)


async def test_the_standby_streams_as_the_synchronous_one(postgres_pair: PostgresPair) -> None:
    standby = postgres_pair.standby
    assert standby is not None
    row = await postgres_pair.wait_for_sync_standby()
    assert (row["application_name"], row["state"], row["sync_state"]) == (
        standby.name,
        "streaming",
        "sync",
    )
    for server in postgres_pair.servers:
        conn = await asyncpg.connect(server.dsn())
        try:
            assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
            in_recovery = await conn.fetchval("SELECT pg_is_in_recovery()")
            assert in_recovery == (server == standby), server.name
            if server == postgres_pair.primary:
                assert await conn.fetchval("SHOW synchronous_standby_names") == standby.name
        finally:
            await conn.close()


async def test_a_committed_row_survives_killing_the_primary_and_promoting_the_standby(
    postgres_pair: PostgresPair, database: str
) -> None:
    conn = await asyncpg.connect(postgres_pair.dsn(database))
    try:
        # synchronous_commit=on: COMMIT returns once the standby has flushed the row too.
        await conn.execute("INSERT INTO rows VALUES (1, 'committed before the kill')")
    finally:
        await conn.close()
    killed = await postgres_pair.kill_primary()
    promoted = await postgres_pair.promote_standby()
    assert promoted != killed
    assert postgres_pair.primary == promoted

    conn = await asyncpg.connect(postgres_pair.dsn(database))
    try:
        assert await conn.fetchval("SELECT inet_server_port()") == promoted.port
        assert await conn.fetchval("SELECT note FROM rows WHERE id = 1") == (
            "committed before the kill"
        )
        await conn.execute("INSERT INTO rows VALUES (2, 'written to the promoted standby')")
    finally:
        await conn.close()

    await postgres_pair.rejoin_as_standby(killed)
    assert postgres_pair.standby == killed
    conn = await asyncpg.connect(killed.dsn(database))
    try:

        async def replayed() -> bool:
            return bool(await conn.fetchval("SELECT count(*) = 2 FROM rows"))

        await wait_until(replayed, what="the old primary to replay the new primary's row")
    finally:
        await conn.close()


async def test_the_multi_host_dsn_follows_the_primary_across_a_failover(
    postgres_pair: PostgresPair, database: str
) -> None:
    """What a service with DATABASE_URL set to the multi-host DSN sees: asyncpg tries the hosts
    in order and keeps the first that is writable (target_session_attrs=read-write, checked once,
    at connect). A pool's connections to the killed primary are closed, and the pool opens new
    ones by the same rule: none while the standby is still read-only, then to the promoted one.
    """
    dsn = postgres_pair.dsn(database)
    old = postgres_pair.primary
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2)
    assert pool is not None
    try:
        assert await pool.fetchval("SELECT inet_server_port()") == old.port

        await postgres_pair.kill_primary()
        # The standby, still in recovery, is not writable, so no host will do; asyncpg then
        # raises the last error it met (the dead primary's refusal), not
        # TargetServerAttributeNotMatched, which it keeps for when every host answered.
        with pytest.raises(ConnectionRefusedError):
            await asyncpg.connect(dsn, timeout=5)

        new = await postgres_pair.promote_standby()

        async def reconnected() -> int | None:
            try:
                port: int = await pool.fetchval("SELECT inet_server_port()")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return None
            return port

        assert await wait_until(reconnected, what="the pool on the new primary") == new.port
        await pool.execute("INSERT INTO rows VALUES (3, 'through the pool')")

        # The old primary back as a standby, listed first: read-write skips it; without
        # target_session_attrs asyncpg takes it, and writes fail.
        await postgres_pair.rejoin_as_standby(old)
        standby_first = (
            f"postgresql://postgres@127.0.0.1:{old.port},127.0.0.1:{new.port}/{database}"
        )
        conn = await asyncpg.connect(standby_first + "?target_session_attrs=read-write")
        try:
            assert await conn.fetchval("SELECT inet_server_port()") == new.port
        finally:
            await conn.close()
        any_host = await asyncpg.connect(standby_first)
        try:
            assert await any_host.fetchval("SELECT inet_server_port()") == old.port
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await any_host.execute("INSERT INTO rows VALUES (4, 'to a standby')")
        finally:
            await any_host.close()
    finally:
        await pool.close()


async def test_a_cluster_environment_is_migrated_through_the_multi_host_dsn(
    cluster_env: ClusterEnvironment, postgres_pair: PostgresPair
) -> None:
    assert cluster_env.database_url == postgres_pair.dsn(cluster_env.name)
    assert cluster_env.settings().database_url == cluster_env.database_url
    assert cluster_env.environ()["RABBITMQ_URL"].count(",") == 2
    conn = await postgres_pair.admin(cluster_env.name)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") > 0
        assert await conn.fetchval("SELECT count(*) FROM products") > 0
    finally:
        await conn.close()
