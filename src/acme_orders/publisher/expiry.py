"""The expiry of overdue orders: an order still not final ORDER_TIMEOUT seconds after it was
placed is cancelled with reason timed_out, in the one cancel transaction the API's cancel uses
(core/cancellation.py), so inventory gives its stock back and payment never charges it.

Cheap when nothing is due: the table order_expiry holds how far expiry has got, as a position in
orders_created_at_idx's order (created_at, id). A pass reads only the orders placed between that
position and now - ORDER_TIMEOUT, an index range scan of the orders that fell due since the pass
before, whatever the size of the table, and moves the position past them.

Safe with several publishers: a pass runs while it holds order_expiry's row lock, and one that
finds the row locked leaves the work to the publisher holding it (SKIP LOCKED). The cancel locks
each order's row and re-checks its status under the lock, so an order that became final in the
meantime (paid a moment ago) keeps that status.

An order whose insert committed more than ORDER_TIMEOUT after its created_at was stamped would be
missed: the API's statements run under API_STATEMENT_TIMEOUT, far shorter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

import asyncpg

from acme_orders.core.cancellation import cancel_orders
from acme_orders.core.orders import CANCELLABLE_STATUSES, CancelReason, OrderStatus

logger = logging.getLogger(__name__)

# The position of expiry, locked for this pass; no row: this database was never expired.
LOCK_POSITION = """
SELECT expired_through, through_id FROM order_expiry FOR UPDATE SKIP LOCKED
"""
# The first pass of a database starts just before its oldest order that is not final (one scan
# of orders, once), or at the current cutoff when every order is final. Another publisher's
# first pass may have inserted the row meanwhile: then nothing happens here.
START_POSITION = """
INSERT INTO order_expiry (expired_through, through_id)
SELECT coalesce(min(created_at) - interval '1 microsecond', clock_timestamp() - $1::interval),
       '00000000-0000-0000-0000-000000000000'
FROM orders WHERE status = ANY($2::text[])
ON CONFLICT (singleton) DO NOTHING
"""
# The orders placed after the position and at least $3 ago, oldest first: every status, so that
# the position moves past the final ones too. A row comparison on orders_created_at_idx's
# columns and the cutoff: one index range scan between them. now() (the pass's start), not
# clock_timestamp(), which as a volatile function cannot bound the scan: it would read on
# through every order of the last $3 on each pass.
DUE_ORDERS = """
SELECT id, created_at, status FROM orders
WHERE (created_at, id) > ($1::timestamptz, $2::uuid)
  AND created_at <= now() - $3::interval
ORDER BY created_at, id
LIMIT $4
"""
MOVE_POSITION = """
UPDATE order_expiry SET expired_through = $1, through_id = $2
"""


@dataclass(frozen=True, slots=True)
class ExpiryPass:
    # How many orders fell due in this pass, and those of them it cancelled (the others were
    # final by then).
    due: int
    expired: list[UUID]


async def expire_due_orders(
    pool: asyncpg.Pool, order_timeout: timedelta, batch_size: int
) -> ExpiryPass | None:
    """One pass over at most `batch_size` orders that fell due; None when another publisher holds
    the position (its pass does this work)."""
    cancellable = [status.value for status in CANCELLABLE_STATUSES]
    async with pool.acquire() as conn, conn.transaction():
        position = await conn.fetchrow(LOCK_POSITION)
        if position is None:
            await conn.execute(START_POSITION, order_timeout, cancellable)
            position = await conn.fetchrow(LOCK_POSITION)
            if position is None:
                return None
        due = await conn.fetch(DUE_ORDERS, *position, order_timeout, batch_size)
        if not due:
            return ExpiryPass(0, [])
        overdue = [row["id"] for row in due if OrderStatus(row["status"]) in CANCELLABLE_STATUSES]
        before = await cancel_orders(conn, overdue, CancelReason.TIMED_OUT) if overdue else {}
        expired = [
            order_id for order_id, status in before.items() if status in CANCELLABLE_STATUSES
        ]
        last = due[-1]
        await conn.execute(MOVE_POSITION, last["created_at"], last["id"])
    return ExpiryPass(len(due), expired)


def pass_interval(order_timeout: float) -> float:
    """Seconds between two passes: a tenth of the timeout, so an order is cancelled at most about
    10% late, but no more often than twice a second nor less often than every 10 s."""
    return min(10.0, max(0.5, order_timeout / 10))
