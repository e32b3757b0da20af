"""Housekeeping: delete what the pipeline no longer needs, and report on the outbox.

SENT outbox rows, processed_events and idempotency keys only ever grow; the publisher deletes the
ones older than their retention every HOUSEKEEPING_INTERVAL. Each batch is its own short
transaction that picks its rows with FOR UPDATE SKIP LOCKED, so that several publishers purging at
once share the work instead of waiting for each other, and no lock is held for long.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg

from acme_orders.core.outbox import backlog
from acme_orders.core.settings import Settings

logger = logging.getLogger(__name__)

# Each statement deletes one batch and says how many rows it took. The cut-off is computed by the
# server, so the age of a row never depends on the clock of the machine that purges. The batch is
# collected into an array (`= ANY(ARRAY(...))`) rather than joined (`IN (...)`): PostgreSQL then
# fetches each row by its key, where a join may scan the whole table.
#
# The outbox is scanned in id order: old rows have the lowest ids, so the scan stops early. Only
# SENT rows are candidates; a NEW row is an event still to be published, whatever its age.
_PURGE_SENT_EVENTS = """
    WITH purged AS (
        DELETE FROM event_outbox
        WHERE id = ANY(ARRAY(
            SELECT id FROM event_outbox
            WHERE status = 'SENT' AND published_at < now() - $1::interval
            ORDER BY id
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        ))
        RETURNING 1
    )
    SELECT count(*) FROM purged
"""

# No ORDER BY: the BRIN index on processed_at can find old rows but not sort them, and any old
# rows will do. By ctid, a TID scan: the rows are locked, so their ctid cannot change before the
# DELETE.
_PURGE_PROCESSED_EVENTS = """
    WITH purged AS (
        DELETE FROM processed_events
        WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM processed_events
            WHERE processed_at < now() - $1::interval
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        ))
        RETURNING 1
    )
    SELECT count(*) FROM purged
"""

_PURGE_IDEMPOTENCY_KEYS = """
    WITH purged AS (
        DELETE FROM idempotency_keys
        WHERE key = ANY(ARRAY(
            SELECT key FROM idempotency_keys
            WHERE created_at < now() - $1::interval
            ORDER BY created_at
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        ))
        RETURNING 1
    )
    SELECT count(*) FROM purged
"""


async def _purge_in_batches(
    pool: asyncpg.Pool, statement: str, older_than: timedelta, batch_size: int
) -> int:
    """Run a batch-deleting statement until a batch comes back short; returns the rows deleted.

    A short batch means no more old rows, or that another purger holds the rest; either way this
    one is done."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    total = 0
    while True:
        # One statement outside an explicit transaction: each batch commits on its own.
        deleted: int = await pool.fetchval(statement, older_than, batch_size)
        total += deleted
        if deleted < batch_size:
            return total


async def purge_sent_events(pool: asyncpg.Pool, older_than: timedelta, batch_size: int) -> int:
    """Delete SENT outbox rows published more than `older_than` ago; NEW rows are never touched."""
    return await _purge_in_batches(pool, _PURGE_SENT_EVENTS, older_than, batch_size)


async def purge_processed_events(pool: asyncpg.Pool, older_than: timedelta, batch_size: int) -> int:
    """Delete processed_events rows older than `older_than`. A redelivery of an event older than
    that would be handled again, hence PROCESSED_EVENTS_RETENTION's lower bounds."""
    return await _purge_in_batches(pool, _PURGE_PROCESSED_EVENTS, older_than, batch_size)


async def purge_idempotency_keys(pool: asyncpg.Pool, older_than: timedelta, batch_size: int) -> int:
    """Delete Idempotency-Key records older than `older_than`; a retry with such a key after that
    places a new order."""
    return await _purge_in_batches(pool, _PURGE_IDEMPOTENCY_KEYS, older_than, batch_size)


async def purge_all(pool: asyncpg.Pool, settings: Settings) -> dict[str, int]:
    """Purge the three tables with the configured retentions; returns the rows deleted by table."""
    batch_size = settings.housekeeping_batch_size
    counts = {
        "event_outbox": await purge_sent_events(pool, settings.outbox_retention, batch_size),
        "processed_events": await purge_processed_events(
            pool, settings.processed_events_retention, batch_size
        ),
        "idempotency_keys": await purge_idempotency_keys(
            pool, settings.idempotency_key_retention, batch_size
        ),
    }
    if any(counts.values()):
        logger.info(
            "purged %d SENT outbox rows, %d processed_events, %d idempotency keys",
            counts["event_outbox"],
            counts["processed_events"],
            counts["idempotency_keys"],
        )
    return counts


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """Rows of the outbox by status, and the oldest row still waiting to be published."""

    # NEW and SENT are always present, zero when there are none.
    counts: dict[str, int] = field(default_factory=dict)
    oldest_new_age: timedelta | None = None
    oldest_new_id: int | None = None


async def outbox_status(pool: asyncpg.Pool) -> OutboxStatus:
    """Count the outbox by status and find its oldest NEW row. A NEW row that keeps getting older
    means the publisher is down or cannot reach RabbitMQ."""
    async with pool.acquire() as conn:
        records = await conn.fetch("SELECT status, count(*) AS n FROM event_outbox GROUP BY status")
        waiting = await backlog(conn)
    counts = {"NEW": 0, "SENT": 0}
    counts.update({r["status"]: r["n"] for r in records})
    return OutboxStatus(counts, oldest_new_age=waiting.oldest_age, oldest_new_id=waiting.oldest_id)
