"""The cursor of `GET /orders`: where a page ended, as an opaque string a client hands back. Any
position makes a cursor that gives it back; any other string is refused with a ValueError (which
the API answers 422), never another exception."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acme_orders.order_api.paging import FIRST_PAGE, Position, cursor_after, position_of

bounded = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

instants = st.datetimes(
    min_value=datetime(2, 1, 1),  # noqa: DTZ001 (naive bounds; the values get a zone)
    max_value=datetime(9998, 12, 31),  # noqa: DTZ001
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5))]),
)


@bounded
@given(instants, st.uuids())
def test_a_cursor_gives_back_the_position_it_was_made_from(
    created_at: datetime, order_id: UUID
) -> None:
    cursor = cursor_after(Position(created_at, order_id))

    assert position_of(cursor) == Position(created_at, order_id)
    # Opaque, and safe in a query string as it is.
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,80}", cursor), cursor


@bounded
@given(st.text(max_size=120) | st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgh0123456789-_"))
def test_any_other_text_is_a_value_error_that_says_where_cursors_come_from(text: str) -> None:
    try:
        position = position_of(text)
    except ValueError as refused:
        message = str(refused)
    else:
        # Text that decodes is a position, which gives back a cursor that names it.
        assert position_of(cursor_after(position)) == position
        return
    assert "next_cursor" in message


@pytest.mark.parametrize(
    "text",
    ["", "====", "not a cursor", "MTIz", "x" * 1000, "LTE.MDAw"],
)
def test_text_that_is_not_a_cursor_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="next_cursor"):
        position_of(text)


def test_the_first_page_starts_after_any_order() -> None:
    assert FIRST_PAGE.created_at > datetime.now(UTC) + timedelta(days=365 * 1000)
    assert FIRST_PAGE.order_id == UUID(int=2**128 - 1)
