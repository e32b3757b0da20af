"""Property-based tests (Hypothesis) of what the system accepts from outside: the API's order body
(PlaceOrder) and the events consumers read off RabbitMQ. Whatever comes in is either a valid
model or a pydantic ValidationError, never another exception, and nothing out of bounds passes."""

from __future__ import annotations

import json
import string
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from acme_orders.core.events import (
    EVENT_TYPES,
    MAX_LINES,
    MAX_QTY,
    Event,
    InventoryReleased,
    InventoryReserved,
    OrderCancelled,
    OrderLine,
    OrderOutOfStock,
    OrderPlaced,
    PaymentCompleted,
    PaymentFailed,
    StockLine,
    StockShortage,
)
from acme_orders.order_api.schemas import PlaceOrder

# Unit tests run on every change: a hundred examples per property is plenty there. No deadline:
# the machine is shared, and a slow example is not a wrong one.
bounded = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Drawing a whole event of up to 50 lines per example is slow: fewer, per event type.
per_event_type = settings(bounded, max_examples=40)

# --- what a valid order looks like ------------------------------------------------------------

# Printable, no control characters, not blank at either end (the API strips them).
customer_ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Zs")),
    min_size=1,
    max_size=64,
)
skus = st.text(alphabet=string.ascii_uppercase + string.digits + "-", min_size=1, max_size=64)
emails = st.builds(
    "{}@{}.example.com".format,
    st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=30),
    st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=20),
)
quantities = st.integers(min_value=1, max_value=MAX_QTY)


@st.composite
def valid_orders(draw: st.DrawFn) -> dict[str, Any]:
    lines = draw(st.lists(skus, min_size=1, max_size=MAX_LINES, unique=True))
    return {
        "customer_id": draw(customer_ids),
        "email": draw(emails),
        "items": [{"sku": sku, "qty": draw(quantities)} for sku in lines],
    }


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner),
        max_leaves=20,
    )


def only_validation_errors(model: type[BaseModel], data: object) -> BaseModel | None:
    """Validate as the API or a consumer does, from JSON; None if refused, and refused only ever
    with a ValidationError (anything else raised fails the test)."""
    try:
        return model.model_validate_json(json.dumps(data))
    except ValidationError:
        return None


# --- PlaceOrder ---------------------------------------------------------------------------------


@bounded
@given(valid_orders())
def test_any_valid_order_is_accepted_and_round_trips(body: dict[str, Any]) -> None:
    order = PlaceOrder.model_validate_json(json.dumps(body))

    assert PlaceOrder.model_validate_json(order.model_dump_json()) == order
    assert [(line.sku, line.qty) for line in order.items] == [
        (line["sku"], line["qty"]) for line in body["items"]
    ]


@bounded
@given(valid_orders(), st.integers().filter(lambda n: not 1 <= n <= MAX_QTY))
def test_a_quantity_outside_1_to_1000_is_refused(body: dict[str, Any], qty: int) -> None:
    body["items"][0]["qty"] = qty

    assert only_validation_errors(PlaceOrder, body) is None


@bounded
@given(valid_orders(), st.sampled_from(["2", 2.0, 1.5, True, None, [1], {"n": 1}]))
def test_a_quantity_that_is_not_an_integer_is_refused(body: dict[str, Any], qty: object) -> None:
    body["items"][0]["qty"] = qty

    assert only_validation_errors(PlaceOrder, body) is None


@bounded
@given(
    valid_orders(),
    st.sampled_from(["customer_id", "sku", "email"]),
    st.integers(min_value=1, max_value=5000),
)
def test_an_over_long_string_is_refused(body: dict[str, Any], field: str, extra: int) -> None:
    if field == "sku":
        body["items"][0]["sku"] = "S" * (64 + extra)
    elif field == "customer_id":
        body["customer_id"] = "C" * (64 + extra)
    else:
        body["email"] = "a" * (250 + extra) + "@example.com"

    assert only_validation_errors(PlaceOrder, body) is None


@bounded
@given(
    valid_orders(),
    st.text(min_size=1, max_size=30).filter(lambda k: k not in {"customer_id", "email", "items"}),
    json_values(),
)
def test_an_unknown_field_is_refused(body: dict[str, Any], field: str, value: object) -> None:
    body[field] = value

    assert only_validation_errors(PlaceOrder, body) is None


@bounded
@given(valid_orders(), st.text(min_size=1, max_size=10).filter(lambda k: k not in {"sku", "qty"}))
def test_an_unknown_field_on_a_line_is_refused(body: dict[str, Any], field: str) -> None:
    body["items"][0][field] = 1

    assert only_validation_errors(PlaceOrder, body) is None


@bounded
@given(valid_orders(), st.integers(min_value=MAX_LINES + 1, max_value=MAX_LINES + 200))
def test_more_than_50_lines_are_refused(body: dict[str, Any], lines: int) -> None:
    body["items"] = [{"sku": f"SKU-{n}", "qty": 1} for n in range(lines)]

    assert only_validation_errors(PlaceOrder, body) is None


@bounded
@given(json_values())
def test_arbitrary_json_is_a_validation_error_or_an_order(data: object) -> None:
    only_validation_errors(PlaceOrder, data)


# --- events, as a consumer reads them ----------------------------------------------------------

uuids = st.uuids()
money = st.decimals(
    min_value=0, max_value=Decimal("9999999999999999.99"), places=2, allow_nan=False
)
order_lines = st.builds(OrderLine, sku=skus, qty=quantities, unit_price=money)
line_tuples = st.lists(order_lines, min_size=1, max_size=MAX_LINES).map(tuple)
customer = {"order_id": uuids, "customer_id": customer_ids, "email": emails}

EVENTS: dict[type[Event], st.SearchStrategy[Event]] = {
    OrderPlaced: st.builds(OrderPlaced, items=line_tuples, total=money, **customer),
    InventoryReserved: st.builds(InventoryReserved, items=line_tuples, total=money, **customer),
    OrderOutOfStock: st.builds(
        OrderOutOfStock,
        shortages=st.lists(
            st.builds(
                StockShortage,
                sku=skus,
                requested=quantities,
                available=st.integers(min_value=0, max_value=2**31 - 1),
            ),
            min_size=1,
            max_size=MAX_LINES,
        ).map(tuple),
        **customer,
    ),
    InventoryReleased: st.builds(
        InventoryReleased,
        order_id=uuids,
        items=st.lists(st.builds(StockLine, sku=skus, qty=quantities), min_size=1, max_size=5).map(
            tuple
        ),
    ),
    PaymentCompleted: st.builds(PaymentCompleted, amount=money, payment_id=uuids, **customer),
    PaymentFailed: st.builds(
        PaymentFailed, amount=money, reason=st.text(max_size=1000), **customer
    ),
    OrderCancelled: st.builds(OrderCancelled, reason=st.text(min_size=1, max_size=64), **customer),
}


def test_every_event_type_has_a_strategy() -> None:
    assert set(EVENTS) == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda cls: cls.__name__)
@bounded
@given(data=st.data())
def test_any_valid_event_round_trips_through_json(
    event_type: type[Event], data: st.DataObject
) -> None:
    event = data.draw(EVENTS[event_type])

    assert event_type.model_validate_json(event.model_dump_json()) == event


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda cls: cls.__name__)
@per_event_type
@given(data=st.data())
def test_any_message_is_a_validation_error_or_an_event(
    event_type: type[Event], data: st.DataObject
) -> None:
    """What a consumer does with a body that parsed as JSON and names this event type: arbitrary
    fields, or a valid event with one field replaced by anything at all."""
    valid = json.loads(data.draw(EVENTS[event_type]).model_dump_json())
    name = data.draw(st.sampled_from(sorted(valid)))
    body = data.draw(
        st.dictionaries(st.text(max_size=20), json_values())
        | st.just(valid | {name: data.draw(json_values())})
    )
    body["event_type"] = event_type.model_fields["event_type"].default

    only_validation_errors(event_type, body)


@bounded
@given(data=st.data(), qty=st.integers(min_value=MAX_QTY + 1) | st.integers(max_value=0))
def test_an_event_with_a_quantity_out_of_bounds_is_refused(data: st.DataObject, qty: int) -> None:
    body = json.loads(data.draw(EVENTS[OrderPlaced]).model_dump_json())
    body["items"][0]["qty"] = qty

    assert only_validation_errors(OrderPlaced, body) is None


# Each string field of the events, where it is in a body, and the longest it may be.
LONGEST = [
    (PaymentFailed, ("customer_id",), 64),
    (PaymentFailed, ("email",), 254),
    (PaymentFailed, ("reason",), 1000),
    (InventoryReleased, ("items", 0, "sku"), 64),
    (OrderOutOfStock, ("shortages", 0, "sku"), 64),
]


def set_at(body: dict[str, Any], path: tuple[str | int, ...], value: object) -> None:
    *parents, last = path
    holder: Any = body
    for step in parents:
        holder = holder[step]
    holder[last] = value


@pytest.mark.parametrize(
    ("event_type", "path", "longest"),
    LONGEST,
    ids=[f"{cls.__name__}.{'.'.join(map(str, path))}" for cls, path, _ in LONGEST],
)
@bounded
@given(data=st.data(), extra=st.integers(min_value=1, max_value=10_000))
def test_an_event_string_over_its_bound_is_refused_and_at_it_accepted(
    event_type: type[Event],
    path: tuple[str | int, ...],
    longest: int,
    data: st.DataObject,
    extra: int,
) -> None:
    body = json.loads(data.draw(EVENTS[event_type]).model_dump_json())

    set_at(body, path, "x" * longest)
    assert only_validation_errors(event_type, body) is not None
    set_at(body, path, "x" * (longest + extra))
    assert only_validation_errors(event_type, body) is None
