"""Where orders wait: for each order that is still not final some time after it was placed, the
step of the pipeline it waits on. Read by `acme-orders audit` and the operator's board.

An order that is not final moves on when its latest event is handled: a pending order waits for
inventory to handle its OrderPlaced, a reserved one for payment to handle its InventoryReserved.
So its latest outbox row says where it is:

- `outbox`: the event is NEW, not published yet (since it was written): the publisher is down,
  or cannot reach RabbitMQ.
- `broker`: published, but a service bound to its routing key has not handled it (since it was
  published): the service is down, behind, or retrying it.
- `dead_letter`: published, and parked in the dead-letter queue of a service's queue (since it
  was parked, with the reason): an operator has to look at it (`acme-orders dlq list`).
- `handled`: every service bound to it handled it, yet the order did not move on. Not a state
  the pipeline leaves an order in: look at its trace.
- `no_event`: the order has no event in the outbox: it was not placed through the API, or its
  rows were purged after OUTBOX_RETENTION.

The orders are found with one statement, and the dead letters are read only when some order's
event was published and not handled, from those services' dead-letter queues alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

import asyncpg

from acme_orders.core import topology
from acme_orders.core.settings import Settings
from acme_orders.ops import dead_letters


class WaitStage(StrEnum):
    OUTBOX = "outbox"
    BROKER = "broker"
    DEAD_LETTER = "dead_letter"
    HANDLED = "handled"
    NO_EVENT = "no_event"


@dataclass(frozen=True, slots=True)
class WaitingOrder:
    """An order not final yet, and where it waits. `services` and `queues`: the services that
    have not handled its latest event and the queues they read it from (for `dead_letter`, the
    queues whose DLQ holds it); empty for the other stages. `since`: when it got there (the
    event written, published or dead-lettered; the order placed for `no_event`)."""

    order_id: UUID
    status: str
    placed_at: datetime
    stage: WaitStage
    since: datetime
    event_type: str | None = None
    event_id: UUID | None = None
    services: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    dead_letter_reason: str | None = None

    def describe(self) -> str:
        """Where it waits, in a few words: 'not handled by payment (payment.inventory.reserved)'."""
        event = self.event_type or "its event"
        if self.stage is WaitStage.OUTBOX:
            return f"{event} not published yet (outbox NEW)"
        if self.stage is WaitStage.BROKER:
            return f"{event} published, not handled by {_services_and_queues(self)}"
        if self.stage is WaitStage.DEAD_LETTER:
            queues = ", ".join(dead_letters.queue_names(q)[1] for q in self.queues)
            return f"{event} parked in {queues}: {self.dead_letter_reason or 'no reason recorded'}"
        if self.stage is WaitStage.HANDLED:
            return f"{event} handled by every service, yet the order did not move on"
        return "no event in the outbox (not placed through the API, or purged after retention)"


def _services_and_queues(order: WaitingOrder) -> str:
    return ", ".join(
        f"{service} ({queue})" for service, queue in zip(order.services, order.queues, strict=True)
    )


# The first $2 orders, oldest first, that are not final and were placed more than $1 ago, each
# with its latest outbox event and the services of $3 that handled that event.
#
# Orders are only ever read from the expiry's watermark on (db/009_cancellation.sql: every order
# placed up to it is final, and a final status never changes), so with ORDER_TIMEOUT on this is a
# range of orders_created_at_idx, not a scan of the whole table; without a watermark it is a scan
# (there is deliberately no index on status: 004_hot_status_updates.sql). processed_events is
# read by its key (service, event_id), one probe per consuming service.
WAITING_ORDERS = """
WITH waiting AS (
    SELECT o.id, o.status, o.created_at FROM orders AS o
    WHERE o.status IN ('pending', 'reserved')
      AND o.created_at < clock_timestamp() - $1::interval
      AND o.created_at >= coalesce((SELECT expired_through FROM order_expiry), '-infinity')
    ORDER BY o.created_at, o.id
    LIMIT $2
)
SELECT w.id, w.status, w.created_at AS placed_at,
       e.event_id, e.event_type, e.routing_key, e.status AS outbox_status,
       e.created_at AS written_at, e.published_at,
       ARRAY(
           SELECT p.service FROM processed_events AS p
           WHERE p.service = ANY($3::text[]) AND p.event_id = e.event_id
       ) AS handled_by
FROM waiting AS w
LEFT JOIN LATERAL (
    SELECT event_id, event_type, routing_key, status, created_at, published_at
    FROM event_outbox WHERE order_id = w.id
    ORDER BY id DESC
    LIMIT 1
) AS e ON true
ORDER BY w.created_at, w.id
"""

# How many orders WAITING_ORDERS would list without its limit.
COUNT_WAITING_ORDERS = """
SELECT count(*) FROM orders AS o
WHERE o.status IN ('pending', 'reserved')
  AND o.created_at < clock_timestamp() - $1::interval
  AND o.created_at >= coalesce((SELECT expired_through FROM order_expiry), '-infinity')
"""


# Dead letters read per queue to find where an unhandled event is parked: a DLQ grown huge is not
# read whole every time the board looks (an event parked further back shows as in the broker).
DEAD_LETTERS_READ = 1000


async def where_orders_wait(
    pool: asyncpg.Pool,
    settings: Settings,
    older_than: timedelta,
    limit: int,
    *,
    read_dead_letters: bool = True,
) -> list[WaitingOrder]:
    """The first `limit` orders, oldest first, not final `older_than` after they were placed,
    and where each waits. The dead-letter queues are read (and every message left in place, in
    its order: ops/dead_letters.py), the first DEAD_LETTERS_READ of each, only for events
    published and not handled; with
    `read_dead_letters` false, or when nothing is unhandled, RabbitMQ is not asked at all, and
    an unhandled event is reported as waiting in the broker."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    records = await pool.fetch(WAITING_ORDERS, older_than, limit, list(topology.CONSUMER_SERVICES))
    rows = [dict(record) for record in records]
    parked: dict[str, list[dead_letters.DeadLetter]] = {}
    if read_dead_letters:
        queues = sorted({sub.queue.name for row in rows for sub in unhandled_subscriptions(row)})
        if queues:
            parked = dead_letters_by_event(
                await dead_letters.list_dead_letters(settings, queues, limit=DEAD_LETTERS_READ)
            )
    return [waiting_order(row, parked) for row in rows]


async def count_waiting_orders(pool: asyncpg.Pool, older_than: timedelta) -> int:
    """How many orders are not final `older_than` after they were placed."""
    count: int = await pool.fetchval(COUNT_WAITING_ORDERS, older_than)
    return count


def unhandled_subscriptions(row: Mapping[str, Any]) -> list[topology.Subscription]:
    """The (service, queue) pairs bound to a published event's routing key whose service has not
    handled it; none for an event not published (or no event)."""
    if row["outbox_status"] != "SENT":
        return []
    handled = set(row["handled_by"])
    return [
        sub for sub in topology.subscriptions_of(row["routing_key"]) if sub.service not in handled
    ]


def dead_letters_by_event(
    letters: Iterable[dead_letters.DeadLetter],
) -> dict[str, list[dead_letters.DeadLetter]]:
    """Dead letters by message id, which the publisher sets to the event id."""
    found: dict[str, list[dead_letters.DeadLetter]] = {}
    for letter in letters:
        if letter.message_id:
            found.setdefault(letter.message_id, []).append(letter)
    return found


def waiting_order(
    row: Mapping[str, Any], parked: Mapping[str, Sequence[dead_letters.DeadLetter]]
) -> WaitingOrder:
    """Where the order of a WAITING_ORDERS row waits, given the dead letters by event id."""
    order_id, status, placed_at = row["id"], row["status"], row["placed_at"]
    event_id: UUID | None = row["event_id"]
    if event_id is None:
        return WaitingOrder(order_id, status, placed_at, WaitStage.NO_EVENT, placed_at)
    event_type = str(row["event_type"])
    if row["outbox_status"] != "SENT":
        return WaitingOrder(
            order_id, status, placed_at, WaitStage.OUTBOX, row["written_at"], event_type, event_id
        )
    published_at: datetime = row["published_at"]
    unhandled = unhandled_subscriptions(row)
    if not unhandled:
        return WaitingOrder(
            order_id, status, placed_at, WaitStage.HANDLED, published_at, event_type, event_id
        )
    unhandled_queues = {sub.queue.name for sub in unhandled}
    letters = [
        letter for letter in parked.get(str(event_id), ()) if letter.queue in unhandled_queues
    ]
    if letters:
        parked_in = [sub for sub in unhandled if _parked_in(sub, letters)]
        return WaitingOrder(
            order_id,
            status,
            placed_at,
            WaitStage.DEAD_LETTER,
            letters[0].dead_lettered_at or published_at,
            event_type,
            event_id,
            services=tuple(sub.service for sub in parked_in),
            queues=tuple(sub.queue.name for sub in parked_in),
            dead_letter_reason=letters[0].reason,
        )
    return WaitingOrder(
        order_id,
        status,
        placed_at,
        WaitStage.BROKER,
        published_at,
        event_type,
        event_id,
        services=tuple(sub.service for sub in unhandled),
        queues=tuple(sub.queue.name for sub in unhandled),
    )


def _parked_in(sub: topology.Subscription, letters: Iterable[dead_letters.DeadLetter]) -> bool:
    return any(letter.queue == sub.queue.name for letter in letters)
