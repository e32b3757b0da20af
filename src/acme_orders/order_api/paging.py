"""Where a page of `GET /orders` ends, and the cursor a client hands back for the next one.

The list is newest first, ordered by (created_at, id): the id breaks ties between orders of the
same microsecond. A page starts just after a position, so it is one index range scan however deep
the client has paged, and an order placed meanwhile neither shifts the pages nor shows twice (an
offset would do both). The cursor is that position in a string safe in a query: opaque to
clients, who only hand back the `next_cursor` of a page; not signed, as any position is one the
caller may ask for (what it may read is decided by its key, not by the cursor).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID


@dataclass(frozen=True, slots=True)
class Position:
    """An order's place in the list: the next page holds the orders older than it."""

    created_at: datetime
    order_id: UUID


# The first page starts after every order there could be ('infinity' to PostgreSQL).
FIRST_PAGE = Position(datetime.max.replace(tzinfo=UTC), UUID(int=2**128 - 1))

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# What a cursor is (base64url, unpadded, of "<microseconds since 1970>.<order id in hex>"), and
# the longest one could be: anything else is refused before it is decoded.
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,100}")
_DECODED = re.compile(r"(-?[0-9]{1,19})\.([0-9a-f]{32})")

NOT_A_CURSOR = (
    "not a cursor this API gave out; pass the next_cursor of the page before as it is, or no "
    "cursor for the first page"
)


def cursor_after(position: Position) -> str:
    """The cursor of the page that starts after `position`. Microseconds are what PostgreSQL
    keeps of a timestamp, so the cursor names the order's time exactly."""
    micros = (position.created_at - _EPOCH) // _MICROSECOND
    text = f"{micros}.{position.order_id.hex}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def position_of(cursor: str) -> Position:
    """The position a cursor names; ValueError, saying where cursors come from, for any string
    that is not one."""
    if not _CURSOR.fullmatch(cursor):
        raise ValueError(NOT_A_CURSOR)
    try:
        decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except binascii.Error:
        raise ValueError(NOT_A_CURSOR) from None
    # latin-1 decodes any bytes; the pattern then admits only what cursor_after writes.
    match = _DECODED.fullmatch(decoded.decode("latin-1"))
    if match is None:
        raise ValueError(NOT_A_CURSOR)
    try:
        created_at = _EPOCH + int(match[1]) * _MICROSECOND
    except OverflowError:
        raise ValueError(NOT_A_CURSOR) from None
    return Position(created_at, UUID(hex=match[2]))
