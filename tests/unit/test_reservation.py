"""The reservation rule, without a database: every order all or nothing, stock never below zero,
and a batch decided exactly as its orders would be one at a time."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from acme_orders.inventory.reservation import (
    Decision,
    Shortage,
    WantedOrder,
    decide_reservations,
)

SKUS = ["A", "B", "C", "D"]

stocks = st.dictionaries(st.sampled_from(SKUS[:3]), st.integers(min_value=0, max_value=20))
# D is a SKU the stock does not know: an order for it can never be reserved.
wanted = st.dictionaries(
    st.sampled_from(SKUS), st.integers(min_value=1, max_value=8), min_size=1, max_size=4
)
batches = st.lists(
    st.builds(WantedOrder, order_id=st.builds(uuid.uuid4), wanted=wanted), max_size=12
)


def test_an_order_that_fits_takes_every_line() -> None:
    order = WantedOrder(uuid.uuid4(), {"A": 2, "B": 1})

    decisions, left = decide_reservations({"A": 5, "B": 1}, [order])

    assert decisions == [Decision(order.order_id)]
    assert left == {"A": 3, "B": 0}


def test_an_order_short_of_one_line_takes_nothing_and_says_what_it_lacked() -> None:
    order = WantedOrder(uuid.uuid4(), {"A": 2, "B": 3, "D": 1})

    decisions, left = decide_reservations({"A": 5, "B": 1}, [order])

    assert decisions == [Decision(order.order_id, (Shortage("B", 3, 1), Shortage("D", 1, 0)))]
    assert left == {"A": 5, "B": 1}


def test_a_later_order_gets_only_what_the_earlier_ones_left() -> None:
    first, second = WantedOrder(uuid.uuid4(), {"A": 4}), WantedOrder(uuid.uuid4(), {"A": 2})

    decisions, left = decide_reservations({"A": 5}, [first, second])

    assert [d.reserved for d in decisions] == [True, False]
    assert decisions[1].shortages == (Shortage("A", 2, 1),)
    assert left == {"A": 1}


@given(stocks, batches)
def test_stock_never_goes_below_zero(stock: dict[str, int], orders: list[WantedOrder]) -> None:
    _, left = decide_reservations(stock, orders)

    assert all(qty >= 0 for qty in left.values())
    assert set(left) == set(stock)


@given(stocks, batches)
def test_every_order_is_all_or_nothing(stock: dict[str, int], orders: list[WantedOrder]) -> None:
    decisions, left = decide_reservations(stock, orders)

    taken = {sku: 0 for sku in stock}
    for order, decision in zip(orders, decisions, strict=True):
        assert decision.order_id == order.order_id
        if decision.reserved:
            for sku, qty in order.wanted.items():
                taken[sku] += qty
        else:
            # Short of at least one line, and only of lines it wanted more of than there was.
            assert {s.sku for s in decision.shortages} <= set(order.wanted)
            assert all(s.requested > s.available for s in decision.shortages)
    assert {sku: stock[sku] - taken[sku] for sku in stock} == left


@given(stocks, batches)
def test_a_batch_decides_as_its_orders_would_one_at_a_time(
    stock: dict[str, int], orders: list[WantedOrder]
) -> None:
    together, left_together = decide_reservations(stock, orders)

    one_by_one: list[Decision] = []
    left = dict(stock)
    for order in orders:
        [decision], left = decide_reservations(left, [order])
        one_by_one.append(decision)

    assert together == one_by_one
    assert left_together == left
