"""The identifiers the system makes for its rows: orders and events.

UUIDv7 (RFC 9562): the first 48 bits are the Unix time in milliseconds, the rest random, so ids
made later sort later. Each B-tree they key (orders, their lines and reservations, the outbox,
processed_events, payments, notifications) then grows at its right-hand edge, whatever the size
of the table; with random UUIDs (v4) every insert lands on a leaf page of its own, on a table of
months of history one that is cold, whose first change after a checkpoint writes the whole page
into the write-ahead log (BENCHMARKS.md, the history runs). Still unguessable enough for ids that
are no secret: an order is only ever shown to the key that placed it."""

from __future__ import annotations

from uuid import UUID

from uuid_utils.compat import uuid7


def new_id() -> UUID:
    """A new, time-ordered id; monotonic within this process, even within one millisecond."""
    return uuid7()
