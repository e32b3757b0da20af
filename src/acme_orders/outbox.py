"""The transactional outbox: events are rows written in the same transaction as the change that
caused them, and the publisher relays them to RabbitMQ after commit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from uuid import UUID

from acme_orders.database import Connection
from acme_orders.events import Event


async def add_to_outbox(tx: Connection, events: Iterable[Event]) -> None:
    """Store events for publishing; call inside the transaction that makes them true. An insert
    trigger sends NOTIFY event_outbox, which wakes the publisher when the transaction commits."""
    events = list(events)
    if not events:
        return
    # One statement, one round trip, however many events.
    await tx.execute(
        """
        INSERT INTO event_outbox (event_id, event_type, routing_key, order_id, payload)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::jsonb[])
        """,
        [e.event_id for e in events],
        [e.event_type for e in events],
        [e.routing_key for e in events],
        [e.order_id for e in events],
        [e.model_dump_json() for e in events],
    )


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    event_id: UUID
    event_type: str
    routing_key: str
    payload: bytes


async def claim_new_events(tx: Connection, limit: int) -> list[OutboxRow]:
    """Lock up to `limit` NEW rows, oldest first, for this transaction. SKIP LOCKED lets other
    publishers claim the rows after these instead of waiting for them."""
    records = await tx.fetch(
        """
        SELECT id, event_id, event_type, routing_key, payload::text AS payload
        FROM event_outbox
        WHERE status = 'NEW'
        ORDER BY id
        LIMIT $1
        FOR UPDATE SKIP LOCKED
        """,
        limit,
    )
    return [
        OutboxRow(r["id"], r["event_id"], r["event_type"], r["routing_key"], r["payload"].encode())
        for r in records
    ]


async def mark_sent(tx: Connection, ids: Sequence[int]) -> None:
    await tx.execute(
        """
        UPDATE event_outbox SET status = 'SENT', published_at = clock_timestamp()
        WHERE id = ANY($1::bigint[])
        """,
        list(ids),
    )
