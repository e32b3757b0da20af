"""An order's timeline: every event of the order in causal order, who emitted it, when it was
published, and when each consuming service handled it. Served by `GET /orders/{id}/events` and
printed by `acme-orders trace ORDER_ID`.

Per hop it says where the time went (`hop_lags`): in the outbox (recorded until published), in the
broker (published until the consumer took the batch that handled it: in the queue, or delivered
and waiting in the consumer's prefetch) and in the consumer (from taking the batch until its
transaction recorded the event, processed_at: decoding, a linger, waiting for a connection,
retries in place while the database is away). The handler's own statements and the commit follow
within the same transaction (the consumers' acme_handler_seconds). `received_at` was
added by db/011; rows recorded before it have none, and those hops are unknown.

It reads what the pipeline already records: the order's rows in `event_outbox` (in id order, which
is causal order: each event is written by the transaction that handled the one before) and the
`processed_events` rows of those events. Outbox rows are purged OUTBOX_RETENTION after they were
published, so an older order has a status but no events left to show.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from acme_orders.core import topology
from acme_orders.core.orders import OrderStatus


@dataclass(frozen=True, slots=True)
class Handling:
    """One service's handling of an event: expected (it subscribes to the routing key) or seen."""

    service: str
    # The queue it reads the event from; None for a service that handled the event although none
    # of its queues is bound to the routing key (a binding removed since).
    queue: str | None
    # None: not handled (yet).
    processed_at: datetime | None
    # When the consumer took the batch that handled it; None when not handled, or recorded before
    # processed_events had the column.
    received_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class HopLags:
    """Where an event's time went on its way to one consumer, in seconds; None: unknown (not that
    far yet, or recorded before received_at existed)."""

    outbox: float | None
    broker: float | None
    handling: float | None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    # Never below 0: published_at is stamped when the publisher claims the row, just before it
    # publishes, and received_at is measured back from the insert; a rounding must not read as a
    # message handled before it was sent.
    return max(0.0, (end - start).total_seconds())


def hop_lags(event: TimelineEvent, handling: Handling | None) -> HopLags:
    """The time the event spent in the outbox, then, for `handling`'s service, in the broker and
    in the consumer until its transaction recorded it."""
    outbox = _seconds(event.recorded_at, event.published_at)
    if handling is None:
        return HopLags(outbox, None, None)
    return HopLags(
        outbox,
        _seconds(event.published_at, handling.received_at),
        _seconds(handling.received_at, handling.processed_at),
    )


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    event_id: UUID
    event_type: str
    routing_key: str
    # The service whose transaction wrote the event; None for a type this code does not know.
    emitted_by: str | None
    # When the event happened, by the clock of the process that emitted it (from the payload).
    occurred_at: datetime
    # When its outbox row was written, by the database's clock, like the two times below.
    recorded_at: datetime
    # When the publisher marked it SENT, after the broker confirmed it; None while NEW. A consumer
    # may handle the event a moment before this, while the publisher waits for the other
    # confirms of its batch.
    published_at: datetime | None
    handled_by: tuple[Handling, ...]
    # From the payload, when the emitter recorded them: the request the order's story started
    # with, and the event whose handling emitted this one.
    correlation_id: str | None = None
    causation_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class Timeline:
    order_id: UUID
    status: OrderStatus
    placed_at: datetime
    events: tuple[TimelineEvent, ...]


# One round trip. The order row first, so that an order with no events left still answers; the
# outbox by its order_id index; processed_events by its primary key (service, event_id), which is
# why the services are given: without them PostgreSQL would have to scan the whole table.
_TIMELINE = """
SELECT o.status, o.created_at AS placed_at,
       e.event_id, e.event_type, e.routing_key, e.payload->>'occurred_at' AS occurred_at,
       e.payload->>'correlation_id' AS correlation_id,
       e.payload->>'causation_id' AS causation_id,
       e.created_at AS recorded_at, e.published_at, h.services, h.processed_at, h.received_at
FROM orders AS o
LEFT JOIN event_outbox AS e ON e.order_id = o.id
LEFT JOIN LATERAL (
    SELECT array_agg(p.service ORDER BY p.processed_at) AS services,
           array_agg(p.processed_at ORDER BY p.processed_at) AS processed_at,
           array_agg(p.received_at ORDER BY p.processed_at) AS received_at
    FROM processed_events AS p
    WHERE p.service = ANY($3::text[]) AND p.event_id = e.event_id
) AS h ON true
WHERE o.id = $1 AND ($2::bigint IS NULL OR o.api_key_id = $2)
ORDER BY e.id
"""


async def order_timeline(
    pool: asyncpg.Pool, order_id: UUID, only_of: int | None = None
) -> Timeline | None:
    """The order's timeline, or None if there is no such order; with `only_of`, only if the API
    key of that id placed it."""
    rows = await pool.fetch(_TIMELINE, order_id, only_of, list(topology.CONSUMER_SERVICES))
    if not rows:
        return None
    first = rows[0]
    return Timeline(
        order_id=order_id,
        status=OrderStatus(first["status"]),
        placed_at=first["placed_at"],
        events=tuple(_event(row) for row in rows if row["event_id"] is not None),
    )


def _event(row: asyncpg.Record) -> TimelineEvent:
    seen: dict[str, tuple[datetime, datetime | None]] = dict(
        zip(
            row["services"] or (),
            zip(row["processed_at"] or (), row["received_at"] or (), strict=True),
            strict=True,
        )
    )
    expected = topology.subscriptions_of(row["routing_key"])
    handled = []
    for sub in expected:
        processed, received = seen.pop(sub.service, (None, None))
        handled.append(Handling(sub.service, sub.queue.name, processed, received))
    # Anyone else who recorded it, although no queue of theirs is bound to its key now.
    handled += [
        Handling(service, None, processed, received)
        for service, (processed, received) in seen.items()
    ]
    return TimelineEvent(
        event_id=row["event_id"],
        event_type=row["event_type"],
        routing_key=row["routing_key"],
        emitted_by=topology.publisher_of(row["event_type"]),
        occurred_at=_parse_time(row["occurred_at"]) or row["recorded_at"],
        recorded_at=row["recorded_at"],
        published_at=row["published_at"],
        handled_by=tuple(handled),
        correlation_id=row["correlation_id"],
        causation_id=_parse_uuid(row["causation_id"]),
    )


def _parse_uuid(text: str | None) -> UUID | None:
    try:
        return UUID(text) if text is not None else None
    except ValueError:
        return None


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else None


def _after(moment: datetime, start: datetime) -> str:
    """Milliseconds since `start`, signed: `+12.3 ms`."""
    # + 0.0 turns a rounded -0.0 into 0.0, so a time equal to the start reads +0.0.
    ms = round((moment - start).total_seconds() * 1000, 1) + 0.0
    return f"{ms:+,.1f} ms"


def _lag(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{round(seconds * 1000, 1) + 0.0:,.1f} ms"


def render_timeline(timeline: Timeline) -> str:
    """The timeline as `acme-orders trace` prints it: one line per event, indented lines for the
    services that handle it, times in milliseconds since the order was placed (every time here is
    the database's clock), each hop's lag after it: the outbox's on the event's line, the
    broker's and the consumer's on each service's."""
    start = timeline.placed_at
    lines = [
        f"order {timeline.order_id}: {timeline.status.value}, "
        f"placed {start.isoformat(timespec='milliseconds')}"
    ]
    type_width = max((len(e.event_type) for e in timeline.events), default=0)
    key_width = max((len(e.routing_key) for e in timeline.events), default=0)
    by_width = max((len(e.emitted_by or "?") for e in timeline.events), default=0)
    for event in timeline.events:
        published = (
            f"published {_after(event.published_at, start)}"
            f"  (outbox {_lag(hop_lags(event, None).outbox)})"
            if event.published_at
            else "not published yet"
        )
        lines.append(
            f"{_after(event.recorded_at, start):>14}  {event.event_type:<{type_width}}  "
            f"{event.routing_key:<{key_width}}  by {event.emitted_by or '?':<{by_width}}  "
            f"{published}"
        )
        if not event.handled_by:
            lines.append(f"{'':>14}    no consumer")
        service_width = max(len(h.service) for h in event.handled_by) if event.handled_by else 0
        for handling in event.handled_by:
            lags = hop_lags(event, handling)
            when = (
                f"handled {_after(handling.processed_at, start)}"
                f"  (broker {_lag(lags.broker)}, handling {_lag(lags.handling)})"
                if handling.processed_at
                else "not handled yet"
            )
            queue = f"  (queue {handling.queue})" if handling.queue else ""
            lines.append(f"{'':>14}    {handling.service:<{service_width}}  {when}{queue}")
    if not timeline.events:
        lines.append(
            "no events left in the outbox (rows are purged OUTBOX_RETENTION after publishing)"
        )
    else:
        count = len(timeline.events)
        lines.append(f"{count} event{'s' if count != 1 else ''}")
    return "\n".join(lines)
