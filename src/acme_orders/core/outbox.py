"""The transactional outbox: events are rows written in the same transaction as the change that
caused them, and the publisher relays them to RabbitMQ after commit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

import orjson

from acme_orders.core.database import Connection
from acme_orders.core.events import Event
from acme_orders.core.observability import tracing

# The columns an event is written with, in the order of every outbox insert (here and the API's
# PLACE_ORDERS, which stores orders and their OrderPlaced in one statement).
EVENT_COLUMNS = "event_id, event_type, routing_key, order_id, payload, trace_context"
# A batch of events, one array per column: one statement, one round trip, however many events.
INSERT_EVENTS = f"""
INSERT INTO event_outbox ({EVENT_COLUMNS})
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::jsonb[], $6::jsonb[])
"""
# Take up to $1 NEW rows, oldest first, and mark them SENT, in one statement (see
# claim_for_publishing).
CLAIM_FOR_PUBLISHING = """
UPDATE event_outbox SET status = 'SENT', published_at = clock_timestamp()
WHERE id IN (
    SELECT id FROM event_outbox
    WHERE status = 'NEW'
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
RETURNING id, event_id, event_type, routing_key, payload::text AS payload,
          trace_context::text AS trace_context
"""
# The NEW rows waiting to be published, and the oldest of them, by the server's clock (the one
# that wrote created_at): both read only the partial index on NEW rows (and the oldest row),
# however many SENT rows there are.
BACKLOG = """
SELECT clock_timestamp() AS at,
       (SELECT count(*) FROM event_outbox WHERE status = 'NEW') AS new_rows,
       oldest.id AS oldest_id,
       clock_timestamp() - oldest.created_at AS oldest_age
FROM (SELECT id, created_at FROM event_outbox WHERE status = 'NEW' ORDER BY id LIMIT 1) AS oldest
RIGHT JOIN (SELECT) AS one ON true
"""


async def add_to_outbox(
    tx: Connection, events: Iterable[Event], trace_contexts: Sequence[str | None] | None = None
) -> None:
    """Store events for publishing; call inside the transaction that makes them true. An insert
    trigger sends NOTIFY event_outbox, which wakes the publisher when the transaction commits.

    Each row keeps the trace context its publishing continues (JSON, see observability.tracing):
    `trace_contexts`, one per event, or else the current one. NULL when not tracing."""
    events = list(events)
    if not events:
        return
    if trace_contexts is None:
        trace_contexts = [tracing.current_trace_context()] * len(events)
    await tx.execute(
        INSERT_EVENTS,
        [e.event_id for e in events],
        [e.event_type for e in events],
        [e.routing_key for e in events],
        [e.order_id for e in events],
        [e.model_dump_json() for e in events],
        list(trace_contexts),
    )


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    event_id: UUID
    event_type: str
    routing_key: str
    payload: bytes
    # The W3C trace context stored with the event (traceparent, tracestate); None when the
    # event was written without tracing.
    trace_context: dict[str, str] | None = None


async def claim_for_publishing(tx: Connection, limit: int) -> list[OutboxRow]:
    """Take up to `limit` NEW rows, oldest first, and mark them SENT in this transaction, in one
    statement: the caller publishes them and commits only once the broker confirmed them all, so
    a publish that fails, or a publisher that dies, rolls the rows back to NEW. SKIP LOCKED lets
    other publishers take the rows after these instead of waiting for them. `published_at` is the
    time of the claim, a moment before the publish it is committed with."""
    records = await tx.fetch(CLAIM_FOR_PUBLISHING, limit)
    # RETURNING follows no particular order; events leave oldest first.
    return sorted(
        (
            OutboxRow(
                r["id"],
                r["event_id"],
                r["event_type"],
                r["routing_key"],
                r["payload"].encode(),
                orjson.loads(r["trace_context"]) if r["trace_context"] is not None else None,
            )
            for r in records
        ),
        key=_outbox_id,
    )


def _outbox_id(row: OutboxRow) -> int:
    return row.id


@dataclass(frozen=True, slots=True)
class Backlog:
    at: datetime  # the database's clock, when it was read
    new_rows: int
    oldest_id: int | None  # None when nothing waits
    oldest_age: timedelta | None


async def backlog(conn: Connection) -> Backlog:
    """What waits to be published: how many NEW rows, and the oldest (its id and age)."""
    row = await conn.fetchrow(BACKLOG)
    assert row is not None
    return Backlog(row["at"], row["new_rows"], row["oldest_id"], row["oldest_age"])
