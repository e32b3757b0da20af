"""The reconciliation audit (`acme-orders audit`): do the books balance?

What it checks, each with one set-based statement (no query per order), in one snapshot of the
database (a read-only REPEATABLE READ transaction), then the broker:

- reservations: every final order's stock reservations match its status: a paid order holds a
  reservation of each of its lines; a payment_failed one had them and gave them back; a cancelled
  one holds none (it had some only if it was reserved); an out_of_stock one never had any.
- stock: each product's stock is its starting stock plus what operators added (stock_ledger,
  db/010_stock_ledger.sql) minus what orders hold (reservations still 'reserved').
- notifications: every final order has exactly one notification, of the kind its status calls
  for.
- events: every SENT outbox event was handled (processed_events) by each service whose queue is
  bound to its routing key (core/topology.py).
- dead letters: every dead-letter queue is empty (counted, not read).
- waiting orders: orders not final `stuck_after` after they were placed, and where each waits
  (ops/waiting.py).

What is still in flight is not a fault: a final order's release and notification, and an event's
handling, follow a moment later, so orders that became final and events published within `grace`
are left for the next audit. What retention removed is not a fault either: housekeeping deletes
SENT outbox rows after OUTBOX_RETENTION and processed_events after PROCESSED_EVENTS_RETENTION, so
only events published within both are checked (the report says since when); orders, their lines,
reservations, notifications and the ledger are never deleted, and `forget` only rewrites e-mail
addresses, so they are checked whole.

The decisions are pure functions over the statements' rows (unit-tested); a statement returns
counts by shape and, for the shapes that are faults, the first `limit` ids, so the report stays
small however many orders there are.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from aio_pika.exceptions import AMQPError, ChannelNotFoundEntity

from acme_orders.core import topology
from acme_orders.core.events import EVENT_TYPES
from acme_orders.core.messaging import connect_once
from acme_orders.core.orders import FINAL_STATUSES, OrderStatus
from acme_orders.core.settings import Settings
from acme_orders.ops import waiting

# The notification each final status calls for (the kinds notification/email.py writes).
NOTIFICATION_KIND_FOR_STATUS: dict[OrderStatus, str] = {
    OrderStatus.PAID: "order_paid",
    OrderStatus.PAYMENT_FAILED: "payment_failed",
    OrderStatus.OUT_OF_STOCK: "out_of_stock",
    OrderStatus.CANCELLED: "order_cancelled",
}
assert set(NOTIFICATION_KIND_FOR_STATUS) == FINAL_STATUSES

DEFAULT_GRACE = timedelta(seconds=60)
# Longer than an order takes through every retry of a step (RETRY_MAX_DELAY's doublings add up to
# about two minutes by default), shorter than ORDER_TIMEOUT's default of 15 minutes.
DEFAULT_STUCK_AFTER = timedelta(seconds=300)
DEFAULT_LIMIT = 20


@dataclass(frozen=True, slots=True)
class Item:
    """One thing a finding is about, by its ids; `detail` says what is wrong with it."""

    order_id: str | None = None
    sku: str | None = None
    event_id: str | None = None
    service: str | None = None
    queue: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {
            name: value
            for name in ("order_id", "sku", "event_id", "service", "queue", "detail")
            if (value := getattr(self, name)) is not None
        }


@dataclass(frozen=True, slots=True)
class Finding:
    """Something off: its kind, how many things have it, and the first of them."""

    kind: str
    count: int
    summary: str
    items: tuple[Item, ...] = ()


@dataclass(frozen=True, slots=True)
class Checked:
    """What the audit looked at, to say so beside what it found."""

    checked_at: datetime
    final_orders: int = 0
    products: int = 0
    events: int = 0
    # The oldest SENT event still kept and checked; None when there is none.
    events_since: datetime | None = None
    queues: int = 0


@dataclass(frozen=True, slots=True)
class Report:
    checked: Checked
    findings: tuple[Finding, ...] = field(default_factory=tuple)
    grace: timedelta = DEFAULT_GRACE
    stuck_after: timedelta = DEFAULT_STUCK_AFTER
    limit: int = DEFAULT_LIMIT
    outbox_retention: timedelta = timedelta(0)
    processed_events_retention: timedelta = timedelta(0)

    @property
    def clean(self) -> bool:
        return not self.findings


# --- Reservations --------------------------------------------------------------------------------

# The shape of a final order's reservations, which is all the check needs: whether it has any,
# whether any is held or released, and whether they match its lines one for one (each line a
# reservation of the same quantity, and no reservation without a line).
ReservationShape = tuple[str, bool, bool, bool, bool]  # status, any, held, released, complete


def reservation_fault(
    status: str, any_reservation: bool, held: bool, released: bool, complete: bool
) -> str | None:
    """The finding kind of a final order whose reservations have this shape, or None if it is
    as its status calls for."""
    if status == OrderStatus.PAID:
        if released:
            return "reservation_released"
        if not complete:
            return "reservation_missing"
        return None
    if status == OrderStatus.PAYMENT_FAILED:
        if held:
            return "reservation_held"
        # It was reserved before its payment failed: each line, then given back.
        if not complete:
            return "reservation_missing"
        return None
    if status == OrderStatus.CANCELLED:
        # Cancelled while pending, it never had any; while reserved, it gave them all back.
        return "reservation_held" if held else None
    if status == OrderStatus.OUT_OF_STOCK:
        return "reservation_unexpected" if any_reservation else None
    return None


def faulty_reservation_shapes() -> list[ReservationShape]:
    """Every shape reservation_fault calls a fault, for the statement to list the orders of."""
    return [
        (status.value, any_reservation, held, released, complete)
        for status in sorted(FINAL_STATUSES)
        for any_reservation, held, released, complete in itertools.product((False, True), repeat=4)
        if reservation_fault(status.value, any_reservation, held, released, complete) is not None
    ]


# Final orders that were final before the grace ($1), by reservation shape; for the shapes of
# $2..$6 (the faults), the first $7 order ids. Lines and reservations are matched by a full join
# on (order, sku): a line without a reservation, or a reservation without a line, is a mismatch.
RESERVATION_SHAPES = """
WITH lines AS (
    SELECT coalesce(i.order_id, r.order_id) AS order_id,
           i.qty AS ordered, r.qty AS reserved, r.status
    FROM order_items AS i
    FULL JOIN stock_reservations AS r ON r.order_id = i.order_id AND r.sku = i.sku
), per_order AS (
    SELECT o.id, o.status, o.updated_at,
           bool_or(l.reserved IS NOT NULL) AS any_reservation,
           coalesce(bool_or(l.status = 'reserved'), false) AS held,
           coalesce(bool_or(l.status = 'released'), false) AS released,
           bool_and(l.ordered IS NOT DISTINCT FROM l.reserved) AS complete
    FROM orders AS o
    JOIN lines AS l ON l.order_id = o.id
    WHERE o.status IN ('paid', 'payment_failed', 'out_of_stock', 'cancelled')
      AND o.updated_at < now() - $1::interval
    GROUP BY o.id
), faulty AS (
    SELECT * FROM unnest($2::text[], $3::bool[], $4::bool[], $5::bool[], $6::bool[])
        AS f (status, any_reservation, held, released, complete)
)
SELECT p.status, p.any_reservation, p.held, p.released, p.complete, count(*) AS orders,
       (array_agg(p.id ORDER BY p.updated_at, p.id) FILTER (WHERE f.status IS NOT NULL))[1:$7]
           AS first_ids
FROM per_order AS p
LEFT JOIN faulty AS f USING (status, any_reservation, held, released, complete)
GROUP BY p.status, p.any_reservation, p.held, p.released, p.complete
"""

_RESERVATION_SUMMARIES = {
    "reservation_released": "paid orders whose stock reservation was released",
    "reservation_missing": "orders that were reserved without a reservation of each of their lines",
    "reservation_held": "payment_failed or cancelled orders still holding stock",
    "reservation_unexpected": "out_of_stock orders with stock reserved",
}


def reservation_findings(rows: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """Findings from RESERVATION_SHAPES' rows: one per kind, its orders the first of each
    faulty shape."""
    by_kind: dict[str, tuple[int, list[Item]]] = {}
    for row in rows:
        kind = reservation_fault(
            row["status"], row["any_reservation"], row["held"], row["released"], row["complete"]
        )
        if kind is None:
            continue
        count, items = by_kind.get(kind, (0, []))
        items.extend(
            Item(order_id=str(order_id), detail=row["status"])
            for order_id in row["first_ids"] or ()
        )
        by_kind[kind] = (count + row["orders"], items)
    return [
        Finding(kind, count, _RESERVATION_SUMMARIES[kind], tuple(items))
        for kind, (count, items) in sorted(by_kind.items())
    ]


# --- Stock ---------------------------------------------------------------------------------------

# Each product's stock beside what the ledger and the reservations say it should be.
STOCK_BALANCES = """
SELECT p.sku, p.stock_qty,
       coalesce(l.starts, 0) AS starts,
       coalesce(l.starting, 0) AS starting,
       coalesce(l.added, 0) AS added,
       coalesce(h.held, 0) AS held
FROM products AS p
LEFT JOIN (
    SELECT sku,
           count(*) FILTER (WHERE reason = 'starting_stock') AS starts,
           sum(qty) FILTER (WHERE reason = 'starting_stock') AS starting,
           sum(qty) FILTER (WHERE reason = 'operator_added') AS added
    FROM stock_ledger GROUP BY sku
) AS l ON l.sku = p.sku
LEFT JOIN (
    SELECT sku, sum(qty) AS held FROM stock_reservations WHERE status = 'reserved' GROUP BY sku
) AS h ON h.sku = p.sku
ORDER BY p.sku
"""


def stock_findings(rows: Sequence[Mapping[str, Any]], limit: int) -> list[Finding]:
    """A product whose stock is not starting + added - held, or that has no starting stock on
    record (exactly one)."""
    mismatched: list[Item] = []
    unrecorded: list[Item] = []
    for row in rows:
        if row["starts"] != 1:
            unrecorded.append(
                Item(sku=row["sku"], detail=f"{row['starts']} starting stock entries")
            )
            continue
        expected = row["starting"] + row["added"] - row["held"]
        if row["stock_qty"] != expected:
            mismatched.append(
                Item(
                    sku=row["sku"],
                    detail=(
                        f"stock {row['stock_qty']}, expected {expected} = starting "
                        f"{row['starting']} + added {row['added']} - held {row['held']}"
                    ),
                )
            )
    findings = []
    if mismatched:
        findings.append(
            Finding(
                "stock_mismatch",
                len(mismatched),
                "products whose stock is not starting stock + added - held by orders",
                tuple(mismatched[:limit]),
            )
        )
    if unrecorded:
        findings.append(
            Finding(
                "stock_unrecorded",
                len(unrecorded),
                "products without exactly one starting stock in stock_ledger",
                tuple(unrecorded[:limit]),
            )
        )
    return findings


# --- Notifications -------------------------------------------------------------------------------

# Final orders that were final before the grace ($3), by status, how many notifications they have
# (0, 1, or 2 for two or more) and whether one is of the kind their status calls for ($1 -> $2);
# for the faulty shapes, the first $4 order ids.
NOTIFICATION_SHAPES = """
WITH per_order AS (
    SELECT o.id, o.status, o.updated_at,
           least(count(n.id), 2)::int AS notifications,
           coalesce(bool_or(n.kind = expected.kind), false) AS kind_matches
    FROM orders AS o
    JOIN unnest($1::text[], $2::text[]) AS expected (status, kind) ON expected.status = o.status
    LEFT JOIN notifications AS n ON n.order_id = o.id
    WHERE o.updated_at < now() - $3::interval
    GROUP BY o.id
)
SELECT status, notifications, kind_matches, count(*) AS orders,
       (array_agg(id ORDER BY updated_at, id)
            FILTER (WHERE notifications <> 1 OR NOT kind_matches))[1:$4] AS first_ids
FROM per_order
GROUP BY status, notifications, kind_matches
"""


def notification_fault(notifications: int, kind_matches: bool) -> str | None:
    if notifications == 0:
        return "notification_missing"
    if notifications > 1:
        return "notification_duplicate"
    return None if kind_matches else "notification_wrong_kind"


_NOTIFICATION_SUMMARIES = {
    "notification_missing": "final orders without a notification",
    "notification_duplicate": "final orders with more than one notification",
    "notification_wrong_kind": "final orders whose notification is not of their status's kind",
}


def notification_findings(rows: Iterable[Mapping[str, Any]]) -> list[Finding]:
    by_kind: dict[str, tuple[int, list[Item]]] = {}
    for row in rows:
        kind = notification_fault(row["notifications"], row["kind_matches"])
        if kind is None:
            continue
        count, items = by_kind.get(kind, (0, []))
        expected = NOTIFICATION_KIND_FOR_STATUS[OrderStatus(row["status"])]
        items.extend(
            Item(order_id=str(order_id), detail=f"{row['status']}, wants {expected}")
            for order_id in row["first_ids"] or ()
        )
        by_kind[kind] = (count + row["orders"], items)
    return [
        Finding(kind, count, _NOTIFICATION_SUMMARIES[kind], tuple(items))
        for kind, (count, items) in sorted(by_kind.items())
    ]


# --- Events --------------------------------------------------------------------------------------


def expected_handlers() -> list[tuple[str, str]]:
    """(routing key, service) for every service that must handle each event type's events."""
    return [
        (cls.routing_key, service)
        for cls in EVENT_TYPES
        for service in topology.consumers_of(cls.routing_key)
    ]


# SENT events published after the retention horizon ($3) and before the grace ($4), and, for each
# service that must handle their routing key ($1 -> $2) and has not, by event type and service:
# how many, and the first $5. processed_events is probed by its key (service, event_id).
UNHANDLED_EVENTS = """
WITH unhandled AS (
    SELECT e.event_id, e.event_type, e.order_id, e.published_at, x.service
    FROM event_outbox AS e
    JOIN unnest($1::text[], $2::text[]) AS x (routing_key, service)
        ON x.routing_key = e.routing_key
    WHERE e.status = 'SENT'
      AND e.published_at >= now() - $3::interval
      AND e.published_at < now() - $4::interval
      AND NOT EXISTS (
          SELECT 1 FROM processed_events AS p
          WHERE p.service = x.service AND p.event_id = e.event_id
      )
)
SELECT event_type, service, count(*) AS events,
       (array_agg(event_id ORDER BY published_at, event_id))[1:$5] AS first_event_ids,
       (array_agg(order_id ORDER BY published_at, event_id))[1:$5] AS first_order_ids
FROM unhandled
GROUP BY event_type, service
ORDER BY event_type, service
"""

# What UNHANDLED_EVENTS looked at: the SENT events in its window, and the oldest of them.
CHECKED_EVENTS = """
SELECT count(*) AS events, min(published_at) AS since FROM event_outbox
WHERE status = 'SENT'
  AND published_at >= now() - $1::interval
  AND published_at < now() - $2::interval
"""


def event_findings(rows: Iterable[Mapping[str, Any]]) -> list[Finding]:
    queue_of = {
        (cls.model_fields["event_type"].default, sub.service): sub.queue.name
        for cls in EVENT_TYPES
        for sub in topology.subscriptions_of(cls.routing_key)
    }
    items: list[Item] = []
    count = 0
    for row in rows:
        count += row["events"]
        items.extend(
            Item(
                order_id=None if order_id is None else str(order_id),
                event_id=str(event_id),
                service=row["service"],
                queue=queue_of.get((row["event_type"], row["service"])),
                detail=f"{row['event_type']} not handled by {row['service']}",
            )
            for event_id, order_id in zip(
                row["first_event_ids"], row["first_order_ids"], strict=True
            )
        )
    if not count:
        return []
    return [
        Finding(
            "event_unhandled",
            count,
            "published events a service bound to their routing key has not handled",
            tuple(items),
        )
    ]


# --- Broker and waiting orders -------------------------------------------------------------------


def dead_letter_findings(counts: Mapping[str, int]) -> list[Finding]:
    """Dead-letter queues that hold messages (`acme-orders dlq list` shows them)."""
    parked = {queue: n for queue, n in counts.items() if n}
    if not parked:
        return []
    return [
        Finding(
            "dead_letters",
            sum(parked.values()),
            "messages parked in dead-letter queues (see `acme-orders dlq list`)",
            tuple(Item(queue=queue, detail=f"{n} messages") for queue, n in parked.items()),
        )
    ]


def waiting_findings(count: int, orders: Sequence[waiting.WaitingOrder]) -> list[Finding]:
    if not count:
        return []
    return [
        Finding(
            "order_waiting",
            count,
            "orders not final long after they were placed, and where each waits",
            tuple(
                Item(
                    order_id=str(order.order_id),
                    event_id=None if order.event_id is None else str(order.event_id),
                    service=",".join(order.services) or None,
                    queue=",".join(order.queues) or None,
                    detail=f"{order.status}, placed "
                    f"{order.placed_at.isoformat(timespec='seconds')}; {order.stage} since "
                    f"{order.since.isoformat(timespec='seconds')}: {order.describe()}",
                )
                for order in orders
            ),
        )
    ]


async def dead_letter_counts(settings: Settings) -> dict[str, int]:
    """The number of messages in each consumer queue's dead-letter queue, from a passive
    declare: nothing is read or moved."""
    counts: dict[str, int] = {}
    connection = await connect_once(settings, "audit")
    async with connection:
        for spec in topology.QUEUES:
            channel = await connection.channel()
            async with channel:
                try:
                    queue = await channel.declare_queue(spec.dead_letter_queue, passive=True)
                except ChannelNotFoundEntity:
                    continue  # not declared (migrate declares them): nothing parked there
                counts[spec.dead_letter_queue] = queue.declaration_result.message_count or 0
    return counts


async def check_database(
    pool: asyncpg.Pool, settings: Settings, grace: timedelta, limit: int
) -> tuple[Checked, list[Finding]]:
    """Every check of the database, in one snapshot."""
    faulty = faulty_reservation_shapes()
    kinds = list(NOTIFICATION_KIND_FOR_STATUS.items())
    handlers = expected_handlers()
    # Both retentions: a SENT row past OUTBOX_RETENTION may be gone, a processed_events row past
    # PROCESSED_EVENTS_RETENTION may be gone.
    kept = min(settings.outbox_retention, settings.processed_events_retention)
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        checked_at: datetime = await conn.fetchval("SELECT now()")
        reservations = await conn.fetch(
            RESERVATION_SHAPES,
            grace,
            *(list(column) for column in zip(*faulty, strict=True)),
            limit,
        )
        stock = await conn.fetch(STOCK_BALANCES)
        notifications = await conn.fetch(
            NOTIFICATION_SHAPES,
            [status.value for status, _ in kinds],
            [kind for _, kind in kinds],
            grace,
            limit,
        )
        events = await conn.fetch(
            UNHANDLED_EVENTS,
            [key for key, _ in handlers],
            [service for _, service in handlers],
            kept,
            grace,
            limit,
        )
        window = await conn.fetchrow(CHECKED_EVENTS, kept, grace)
    assert window is not None
    findings = [
        *reservation_findings(_dicts(reservations)),
        *stock_findings(_dicts(stock), limit),
        *notification_findings(_dicts(notifications)),
        *event_findings(_dicts(events)),
    ]
    checked = Checked(
        checked_at=checked_at,
        final_orders=sum(row["orders"] for row in notifications),
        products=len(stock),
        events=window["events"],
        events_since=window["since"],
    )
    return checked, findings


def _dicts(records: Iterable[asyncpg.Record]) -> list[dict[str, Any]]:
    # Few rows: counts by shape, one per product.
    return [dict(record) for record in records]


class BrokerUnavailableError(Exception):
    """RabbitMQ could not be reached or refused us, once the database was checked."""


# What a broker that is down or refuses us raises (aio_pika's errors, a refused connection).
_BROKER_ERRORS: tuple[type[BaseException], ...] = (OSError, AMQPError)


async def audit(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    grace: timedelta = DEFAULT_GRACE,
    stuck_after: timedelta = DEFAULT_STUCK_AFTER,
    limit: int = DEFAULT_LIMIT,
) -> Report:
    """Check the books; the database first (see check_database), then the broker."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    checked, findings = await check_database(pool, settings, grace, limit)
    stuck = await waiting.count_waiting_orders(pool, stuck_after)
    # The broker is asked only from here on: a broker that cannot be reached is told apart from a
    # database that cannot (BrokerUnavailableError; commands.audit's exit codes).
    try:
        stuck_orders = (
            await waiting.where_orders_wait(pool, settings, stuck_after, limit) if stuck else []
        )
        counts = await dead_letter_counts(settings)
    except (asyncpg.PostgresError, asyncpg.InterfaceError):
        raise
    except _BROKER_ERRORS as exc:
        raise BrokerUnavailableError(" ".join(str(exc).split()) or type(exc).__name__) from exc
    findings += waiting_findings(stuck, stuck_orders)
    findings += dead_letter_findings(counts)
    return Report(
        checked=Checked(
            checked_at=checked.checked_at,
            final_orders=checked.final_orders,
            products=checked.products,
            events=checked.events,
            events_since=checked.events_since,
            queues=len(counts),
        ),
        findings=tuple(findings),
        grace=grace,
        stuck_after=stuck_after,
        limit=limit,
        outbox_retention=settings.outbox_retention,
        processed_events_retention=settings.processed_events_retention,
    )


# --- Output --------------------------------------------------------------------------------------


def _span(span: timedelta) -> str:
    """7d, 12h, 90s: a setting's duration in its largest whole unit."""
    seconds = span.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def retention_note(report: Report) -> str:
    since = report.checked.events_since
    return (
        "events checked: the SENT events published within OUTBOX_RETENTION "
        f"({_span(report.outbox_retention)}) and PROCESSED_EVENTS_RETENTION "
        f"({_span(report.processed_events_retention)}), "
        + (f"the oldest at {since.isoformat(timespec='seconds')}" if since else "none kept")
        + "; older ones are purged by housekeeping, not faults. Orders, reservations, "
        "notifications and the stock ledger are never purged: checked whole."
    )


def report_as_json(report: Report) -> dict[str, Any]:
    """The report as JSON: every finding with its kind, count and first items by their ids."""
    checked = report.checked
    return {
        "clean": report.clean,
        "checked_at": checked.checked_at.isoformat(),
        "grace_seconds": report.grace.total_seconds(),
        "stuck_after_seconds": report.stuck_after.total_seconds(),
        "limit": report.limit,
        "checked": {
            "final_orders": checked.final_orders,
            "products": checked.products,
            "events": checked.events,
            "events_since": checked.events_since.isoformat() if checked.events_since else None,
            "dead_letter_queues": checked.queues,
        },
        "retention": {
            "outbox_retention_seconds": report.outbox_retention.total_seconds(),
            "processed_events_retention_seconds": (
                report.processed_events_retention.total_seconds()
            ),
            "note": retention_note(report),
        },
        "findings": [
            {
                "kind": finding.kind,
                "count": finding.count,
                "summary": finding.summary,
                "items": [item.as_dict() for item in finding.items],
            }
            for finding in report.findings
        ],
    }


def render_report(report: Report) -> str:
    """The report for a terminal: what was checked, then each finding and its first items."""
    checked = report.checked
    lines = [
        f"audit at {checked.checked_at.isoformat(timespec='seconds')}: checked "
        f"{checked.final_orders} final orders, {checked.products} products, "
        f"{checked.events} events, {checked.queues} dead-letter queues "
        f"(grace {_span(report.grace)}, stuck after {_span(report.stuck_after)})",
        retention_note(report),
    ]
    if report.clean:
        lines.append("clean: the books balance")
        return "\n".join(lines)
    for finding in report.findings:
        lines.append(f"{finding.kind} ({finding.count}): {finding.summary}")
        for item in finding.items:
            ids = ", ".join(
                f"{name} {value}" for name, value in item.as_dict().items() if name != "detail"
            )
            lines.append(f"    {ids}" + (f": {item.detail}" if item.detail else ""))
        if finding.count > len(finding.items) and finding.items:
            lines.append(f"    ... and {finding.count - len(finding.items)} more")
    total = sum(finding.count for finding in report.findings)
    lines.append(f"not clean: {total} findings of {len(report.findings)} kinds")
    return "\n".join(lines)
