from __future__ import annotations

import json
from decimal import Decimal
from uuid import uuid4

import pytest
from pydantic import ValidationError

from acme_orders.core.events import (
    EVENT_TYPE_BY_NAME,
    EVENT_TYPES,
    OrderLine,
    OrderPlaced,
)


def placed() -> OrderPlaced:
    return OrderPlaced(
        order_id=uuid4(),
        customer_id="C100",
        email="c100@example.com",
        items=(OrderLine(sku="TSHIRT-BLK-M", qty=2, unit_price=Decimal("19.90")),),
        total=Decimal("39.80"),
    )


def test_event_json_carries_the_envelope_and_the_data() -> None:
    event = placed()

    body = json.loads(event.model_dump_json())

    assert body["event_id"] == str(event.event_id)
    assert body["event_type"] == "OrderPlaced"
    assert body["order_id"] == str(event.order_id)
    assert body["version"] == 1
    assert body["occurred_at"].endswith("Z")
    assert body["items"] == [{"sku": "TSHIRT-BLK-M", "qty": 2, "unit_price": "19.90"}]
    assert body["total"] == "39.80"


def test_event_survives_a_round_trip_through_json() -> None:
    event = placed()

    assert OrderPlaced.model_validate_json(event.model_dump_json()) == event


def test_readers_ignore_fields_they_do_not_know() -> None:
    body = json.loads(placed().model_dump_json()) | {"coupon": "XMAS"}

    assert OrderPlaced.model_validate(body).customer_id == "C100"


def test_an_unknown_version_is_refused() -> None:
    body = json.loads(placed().model_dump_json()) | {"version": 2}

    with pytest.raises(ValidationError, match="version"):
        OrderPlaced.model_validate(body)


def test_events_are_frozen() -> None:
    event = placed()

    with pytest.raises(ValidationError):
        event.customer_id = "someone else"  # type: ignore[misc]


def test_every_event_type_has_its_own_name_and_routing_key() -> None:
    assert len({cls.routing_key for cls in EVENT_TYPES}) == len(EVENT_TYPES)
    assert set(EVENT_TYPE_BY_NAME) == {cls.__name__ for cls in EVENT_TYPES}
