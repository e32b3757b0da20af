"""The idempotency key of a charge, and the simulated gateway: pure, no servers."""

from __future__ import annotations

import re
from decimal import Decimal
from uuid import UUID, uuid4

from acme_orders.core.events import InventoryReserved, OrderLine
from acme_orders.payment.gateway import (
    Charge,
    SimulatedGateway,
    charge_idempotency_key,
    payment_id_for,
)

ORDER = UUID("6f1c2d3e-4b5a-4c6d-8e7f-901234567890")


def reserved(order_id: UUID) -> InventoryReserved:
    return InventoryReserved(
        order_id=order_id,
        customer_id="C1",
        email="c1@example.com",
        items=(OrderLine(sku="TSHIRT-BLK-M", qty=1, unit_price=Decimal("19.90")),),
        total=Decimal("19.90"),
    )


def charge_of(order_id: UUID) -> Charge:
    return Charge(charge_idempotency_key(order_id), order_id, "C1", Decimal("19.90"))


def test_the_key_is_the_orders_whatever_event_asks_for_the_charge() -> None:
    event = reserved(ORDER)
    redelivered = InventoryReserved.model_validate_json(event.model_dump_json())
    # The same order asked for again by another event (published again by hand, say).
    another_event = reserved(ORDER)

    keys = {charge_idempotency_key(e.order_id) for e in (event, redelivered, another_event)}

    assert another_event.event_id != event.event_id
    assert keys == {charge_idempotency_key(ORDER)}
    assert charge_idempotency_key(uuid4()) != charge_idempotency_key(ORDER)


def test_the_key_and_the_payment_id_never_change_with_a_new_version() -> None:
    # A charge made before an upgrade and retried after it must reach the gateway with the same
    # key: these values are fixed for good.
    assert charge_idempotency_key(ORDER) == "order-6f1c2d3e-4b5a-4c6d-8e7f-901234567890-charge"
    assert payment_id_for(charge_idempotency_key(ORDER)) == UUID(
        "9fb07321-3c6d-589e-81c4-287e77ce2d74"
    )


def test_the_key_fits_what_gateways_accept() -> None:
    # Adyen takes at most 64 characters, Stripe 255; letters, digits and dashes pass anywhere.
    key = charge_idempotency_key(uuid4())

    assert len(key) <= 64
    assert re.fullmatch(r"[A-Za-z0-9-]+", key)


async def test_the_simulation_answers_a_key_the_same_way_every_time() -> None:
    gateway = SimulatedGateway(success_rate=0.5)
    orders = [uuid4() for _ in range(200)]

    first = [await gateway.charge(charge_of(order)) for order in orders]
    again = [await SimulatedGateway(success_rate=0.5).charge(charge_of(order)) for order in orders]

    assert first == again
    approved = sum(result.approved for result in first)
    assert 60 < approved < 140  # about half: a probability, drawn per key
    assert all(r.decline_reason == "card declined" for r in first if not r.approved)
    assert len({r.reference for r in first}) == len(orders)


async def test_the_simulation_approves_all_at_rate_1_and_none_at_rate_0() -> None:
    orders = [uuid4() for _ in range(50)]

    always = [await SimulatedGateway(1.0).charge(charge_of(order)) for order in orders]
    never = [await SimulatedGateway(0.0).charge(charge_of(order)) for order in orders]

    assert all(r.approved for r in always)
    assert not any(r.approved for r in never)
