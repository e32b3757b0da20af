"""Every event says which request it comes from and which event caused it."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from uuid import uuid4

import pytest
from pydantic import ValidationError

from acme_orders.core.events import (
    InventoryReserved,
    OrderLine,
    OrderPlaced,
    PaymentCompleted,
    caused_by,
)
from acme_orders.order_api.request_context import request_id_of


def placed(correlation_id: str | None = "abc-123") -> OrderPlaced:
    return OrderPlaced(
        order_id=uuid4(),
        customer_id="C1",
        email="c1@example.com",
        items=(OrderLine(sku="TSHIRT-BLK-M", qty=1, unit_price=Decimal("19.90")),),
        total=Decimal("19.90"),
        correlation_id=correlation_id,
    )


def reserved_from(event: OrderPlaced) -> InventoryReserved:
    return InventoryReserved(
        order_id=event.order_id,
        customer_id=event.customer_id,
        email=event.email,
        items=event.items,
        total=event.total,
    )


def test_an_effect_carries_its_causes_correlation_and_names_the_cause() -> None:
    order = placed()

    reserved = caused_by(order, reserved_from(order))
    paid = caused_by(
        reserved,
        PaymentCompleted(
            order_id=order.order_id,
            customer_id="C1",
            email="c1@example.com",
            amount=order.total,
            payment_id=uuid4(),
        ),
    )

    assert (order.correlation_id, order.causation_id) == ("abc-123", None)
    assert (reserved.correlation_id, reserved.causation_id) == ("abc-123", order.event_id)
    assert (paid.correlation_id, paid.causation_id) == ("abc-123", reserved.event_id)
    assert isinstance(paid, PaymentCompleted)


def test_a_cause_without_a_correlation_id_starts_one_with_its_own_id() -> None:
    order = placed(correlation_id=None)

    reserved = caused_by(order, reserved_from(order))

    assert reserved.correlation_id == str(order.event_id)


def test_an_event_written_before_correlation_ids_still_validates() -> None:
    body = json.loads(placed().model_dump_json())
    del body["correlation_id"], body["causation_id"]

    event = OrderPlaced.model_validate(body)

    assert (event.correlation_id, event.causation_id, event.version) == (None, None, 1)


def test_correlation_and_causation_round_trip_through_json() -> None:
    order = placed()
    reserved = caused_by(order, reserved_from(order))

    assert InventoryReserved.model_validate_json(reserved.model_dump_json()) == reserved


@pytest.mark.parametrize(
    "bad",
    ["", "x" * 129, "two words", "line\nbreak", "c100@example.com", "tab\t", "ünïcode"],
)
def test_a_correlation_id_that_could_forge_a_log_line_is_refused(bad: str) -> None:
    body = json.loads(placed().model_dump_json()) | {"correlation_id": bad}

    with pytest.raises(ValidationError, match="correlation_id"):
        OrderPlaced.model_validate(body)


@pytest.mark.parametrize("sane", [b"abc-123", b"0af7651916cd43dd8448eb211c80319c", b"a:b.c_d"])
def test_a_sane_x_request_id_is_kept(sane: bytes) -> None:
    assert request_id_of([(b"x-request-id", sane)]) == sane.decode()


@pytest.mark.parametrize(
    "insane", [b"", b"x" * 129, b"two words", b"abc\n", b"c100@example.com", b"\xff\xfe"]
)
def test_an_insane_or_missing_x_request_id_gets_a_new_id(insane: bytes) -> None:
    replaced = request_id_of([(b"x-request-id", insane)])
    missing = request_id_of([(b"accept", b"*/*")])

    assert re.fullmatch(r"[0-9a-f]{32}", replaced)
    assert re.fullmatch(r"[0-9a-f]{32}", missing)
    assert replaced != missing
