"""Purging old rows and the outbox status, against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest

from acme_orders.ops.housekeeping import (
    outbox_status,
    purge_all,
    purge_idempotency_keys,
    purge_processed_events,
    purge_sent_events,
)
from acme_orders.publisher import service as publisher
from tests.support.environment import TestEnvironment
from tests.support.waiting import wait_until

DAY = timedelta(days=1)


async def add_outbox_rows(
    pool: asyncpg.Pool, n: int, *, status: str, age: timedelta, published_age: timedelta | None
) -> list[UUID]:
    """Outbox rows created `age` ago and, unless None, published `published_age` ago."""
    ids = [uuid4() for _ in range(n)]
    await pool.executemany(
        """
        INSERT INTO event_outbox
            (event_id, event_type, routing_key, payload, status, created_at, published_at)
        VALUES ($1, 'TestHappened', 'test.happened', $2::jsonb, $3,
                now() - $4::interval, now() - $5::interval)
        """,
        [(i, json.dumps({"event_id": str(i)}), status, age, published_age) for i in ids],
    )
    return ids


async def outbox_ids(pool: asyncpg.Pool) -> set[UUID]:
    return {r["event_id"] for r in await pool.fetch("SELECT event_id FROM event_outbox")}


async def add_processed_events(pool: asyncpg.Pool, n: int, age: timedelta) -> list[UUID]:
    ids = [uuid4() for _ in range(n)]
    await pool.executemany(
        """
        INSERT INTO processed_events (service, event_id, processed_at)
        VALUES ('testsvc', $1, now() - $2::interval)
        """,
        [(i, age) for i in ids],
    )
    return ids


async def add_idempotency_keys(pool: asyncpg.Pool, n: int, age: timedelta) -> list[str]:
    """Keys of one order each (the foreign key wants an order), created `age` ago."""
    keys = [f"key-{uuid4()}" for _ in range(n)]
    for key in keys:
        order_id = uuid4()
        await pool.execute(
            """
            INSERT INTO orders (id, customer_id, email, total)
            VALUES ($1, 'C1', 'c1@example.com', 0)
            """,
            order_id,
        )
        await pool.execute(
            """
            INSERT INTO idempotency_keys (key, request_hash, order_id, created_at)
            VALUES ($1, 'hash', $2, now() - $3::interval)
            """,
            key,
            order_id,
            age,
        )
    return keys


async def test_old_sent_rows_go_young_sent_and_new_rows_of_any_age_stay(
    fresh_pool: asyncpg.Pool,
) -> None:
    old_sent = await add_outbox_rows(
        fresh_pool, 3, status="SENT", age=10 * DAY, published_age=8 * DAY
    )
    young_sent = await add_outbox_rows(
        fresh_pool, 2, status="SENT", age=10 * DAY, published_age=6 * DAY
    )
    old_new = await add_outbox_rows(fresh_pool, 2, status="NEW", age=30 * DAY, published_age=None)
    young_new = await add_outbox_rows(
        fresh_pool, 1, status="NEW", age=timedelta(0), published_age=None
    )

    deleted = await purge_sent_events(fresh_pool, older_than=7 * DAY, batch_size=100)

    assert deleted == len(old_sent)
    assert await outbox_ids(fresh_pool) == {*young_sent, *old_new, *young_new}


async def test_sent_rows_are_purged_in_batches_until_none_is_left(fresh_pool: asyncpg.Pool) -> None:
    old = await add_outbox_rows(fresh_pool, 25, status="SENT", age=3 * DAY, published_age=2 * DAY)
    young = await add_outbox_rows(fresh_pool, 3, status="SENT", age=DAY, published_age=timedelta(0))

    # 25 rows in batches of 10: two full batches, then a short one that ends the purge.
    assert await purge_sent_events(fresh_pool, older_than=DAY, batch_size=10) == len(old)
    assert await outbox_ids(fresh_pool) == set(young)
    # Exactly a multiple of the batch size: the last, empty batch ends it.
    more = await add_outbox_rows(fresh_pool, 20, status="SENT", age=3 * DAY, published_age=2 * DAY)
    assert await purge_sent_events(fresh_pool, older_than=DAY, batch_size=10) == len(more)
    assert await purge_sent_events(fresh_pool, older_than=DAY, batch_size=10) == 0


async def test_purgers_running_at_once_share_the_rows(fresh_pool: asyncpg.Pool) -> None:
    old = await add_outbox_rows(fresh_pool, 300, status="SENT", age=3 * DAY, published_age=2 * DAY)

    counts = await asyncio.gather(
        *(purge_sent_events(fresh_pool, older_than=DAY, batch_size=7) for _ in range(3))
    )

    # SKIP LOCKED: no row is deleted twice, and none waits for another purger's lock. A purger
    # may stop early on a batch shortened by the others, so the last word is one more run.
    assert sum(counts) + await purge_sent_events(fresh_pool, DAY, batch_size=7) == len(old)
    assert await outbox_ids(fresh_pool) == set()


async def test_old_processed_events_go_and_young_ones_stay(fresh_pool: asyncpg.Pool) -> None:
    old = await add_processed_events(fresh_pool, 12, age=31 * DAY)
    young = await add_processed_events(fresh_pool, 4, age=29 * DAY)

    deleted = await purge_processed_events(fresh_pool, older_than=30 * DAY, batch_size=5)

    assert deleted == len(old)
    left = {r["event_id"] for r in await fresh_pool.fetch("SELECT event_id FROM processed_events")}
    assert left == set(young)


async def test_old_idempotency_keys_go_and_young_ones_stay(fresh_pool: asyncpg.Pool) -> None:
    old = await add_idempotency_keys(fresh_pool, 5, age=2 * DAY)
    young = await add_idempotency_keys(fresh_pool, 2, age=timedelta(hours=12))

    deleted = await purge_idempotency_keys(fresh_pool, older_than=DAY, batch_size=2)

    assert deleted == len(old)
    left = {r["key"] for r in await fresh_pool.fetch("SELECT key FROM idempotency_keys")}
    assert left == set(young)
    # The orders themselves are not housekeeping's business.
    assert await fresh_pool.fetchval("SELECT count(*) FROM orders") == len(old) + len(young)


async def test_purge_all_uses_the_configured_retentions(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    settings = fresh_env.settings(
        outbox_retention=timedelta(days=2),
        processed_events_retention=timedelta(days=3),
        idempotency_key_retention=timedelta(hours=1),
        housekeeping_batch_size=2,
    )
    await add_outbox_rows(fresh_pool, 3, status="SENT", age=4 * DAY, published_age=2.5 * DAY)
    kept_outbox = await add_outbox_rows(
        fresh_pool, 1, status="SENT", age=4 * DAY, published_age=DAY
    )
    await add_processed_events(fresh_pool, 2, age=3.5 * DAY)
    await add_processed_events(fresh_pool, 1, age=2.5 * DAY)
    await add_idempotency_keys(fresh_pool, 1, age=timedelta(hours=2))

    with caplog.at_level(logging.INFO, logger="acme_orders.ops.housekeeping"):
        counts = await purge_all(fresh_pool, settings)
        again = await purge_all(fresh_pool, settings)

    assert counts == {"event_outbox": 3, "processed_events": 2, "idempotency_keys": 1}
    assert again == {"event_outbox": 0, "processed_events": 0, "idempotency_keys": 0}
    assert await outbox_ids(fresh_pool) == set(kept_outbox)
    # One line for the purge that deleted something, none for the one that did not.
    assert [r.getMessage() for r in caplog.records if r.name == "acme_orders.ops.housekeeping"] == [
        "purged 3 SENT outbox rows, 2 processed_events, 1 idempotency keys"
    ]


async def test_outbox_status_counts_rows_and_finds_the_oldest_new_one(
    fresh_pool: asyncpg.Pool,
) -> None:
    empty = await outbox_status(fresh_pool)
    assert empty.counts == {"NEW": 0, "SENT": 0}
    assert empty.oldest_new_age is None
    assert empty.oldest_new_id is None

    await add_outbox_rows(fresh_pool, 3, status="SENT", age=DAY, published_age=DAY)
    await add_outbox_rows(fresh_pool, 1, status="NEW", age=timedelta(hours=1), published_age=None)
    await add_outbox_rows(fresh_pool, 1, status="NEW", age=timedelta(0), published_age=None)
    first_new = await fresh_pool.fetchval("SELECT min(id) FROM event_outbox WHERE status = 'NEW'")

    status = await outbox_status(fresh_pool)

    assert status.counts == {"NEW": 2, "SENT": 3}
    assert status.oldest_new_id == first_new
    assert status.oldest_new_age is not None
    assert timedelta(hours=1) <= status.oldest_new_age < timedelta(hours=1, minutes=1)


async def test_the_publisher_purges_old_rows_while_it_relays(fresh_env: TestEnvironment) -> None:
    settings = fresh_env.settings(housekeeping_interval=0.2)
    pool = await asyncpg.create_pool(fresh_env.database_url, min_size=1, max_size=2)
    assert pool is not None
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.main(settings, stop))
    try:
        await add_outbox_rows(pool, 3, status="SENT", age=9 * DAY, published_age=8 * DAY)
        await wait_until(
            lambda: pool.fetchval("SELECT count(*) = 0 FROM event_outbox"),
            what="the publisher to purge the old SENT rows",
        )
        # ... and it goes on doing so.
        await add_outbox_rows(pool, 2, status="SENT", age=9 * DAY, published_age=8 * DAY)
        await wait_until(
            lambda: pool.fetchval("SELECT count(*) = 0 FROM event_outbox"),
            what="the next purge",
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await pool.close()


async def test_housekeeping_survives_a_database_that_is_away(
    fresh_env: TestEnvironment, caplog: pytest.LogCaptureFixture
) -> None:
    settings = fresh_env.settings(housekeeping_interval=0.05)
    pool = await asyncpg.create_pool(fresh_env.database_url, min_size=1, max_size=1)
    assert pool is not None
    await pool.close()  # every purge now fails, as it would with the server gone
    stop = asyncio.Event()

    with caplog.at_level(logging.WARNING, logger=publisher.__name__):
        task = asyncio.create_task(publisher.housekeep_until_stopped(settings, pool, stop))
        await wait_until(
            lambda: _async(
                sum("housekeeping failed" in r.getMessage() for r in caplog.records) >= 2
            ),
            what="two failed purges, logged",
        )
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 5)


async def _async(value: bool) -> bool:
    return value
