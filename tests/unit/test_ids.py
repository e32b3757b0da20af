"""The ids the system makes are UUIDv7: time-ordered, so that its indexes grow at one end."""

from __future__ import annotations

import time
from uuid import RFC_4122

from acme_orders.core.events import OrderPlaced
from acme_orders.core.ids import new_id


def unix_ms(made: object) -> int:
    return int(str(made).replace("-", ""), 16) >> 80


def test_a_new_id_is_a_uuid7_of_the_current_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    made = new_id()
    after = time.time_ns() // 1_000_000

    assert made.version == 7
    assert made.variant == RFC_4122
    assert before <= unix_ms(made) <= after


def test_ids_made_one_after_another_sort_in_the_order_they_were_made() -> None:
    # Many within one millisecond: the counter behind the timestamp keeps them in order.
    made = [new_id() for _ in range(10_000)]

    assert made == sorted(made)
    assert len(set(made)) == len(made)


def test_an_event_gets_a_time_ordered_id_unless_it_is_given_one() -> None:
    event = OrderPlaced.model_validate(
        {
            "order_id": new_id(),
            "customer_id": "c-1",
            "email": "c1@example.com",
            "total": "10.00",
            "items": [{"sku": "SKU-1", "qty": 1, "unit_price": "10.00"}],
        }
    )

    assert event.event_id.version == 7
