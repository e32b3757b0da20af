from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

import pytest

from acme_orders.core.events import OrderOutOfStock, PaymentCompleted, PaymentFailed, StockShortage
from acme_orders.notification.email import compose_email
from acme_orders.ops.privacy import mask_email


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("c100@example.com", "c1***@e***.com"),
        ("a@example.com", "a***@e***.com"),
        ("no-at-sign", "***"),
    ],
)
def test_mask_email_keeps_two_letters_and_the_top_level_domain(address: str, masked: str) -> None:
    assert mask_email(address) == masked


def test_each_outcome_has_its_own_email() -> None:
    order_id = uuid4()
    common = {"order_id": order_id, "customer_id": "C1", "email": "c1@example.com"}

    paid = compose_email(PaymentCompleted(**common, amount=Decimal("19.90"), payment_id=uuid4()))
    failed = compose_email(PaymentFailed(**common, amount=Decimal("19.90"), reason="card declined"))
    short = compose_email(
        OrderOutOfStock(
            **common,
            shortages=(StockShortage(sku="TSHIRT-GRY-S", requested=999, available=50),),
        )
    )

    assert (paid.kind, paid.title) == ("order_paid", "Order Paid")
    assert (failed.kind, failed.title) == ("payment_failed", "Payment Failed")
    assert (short.kind, short.title) == ("out_of_stock", "Out of Stock")
    assert all(str(order_id) in e.subject for e in (paid, failed, short))
    assert "card declined" in failed.body
    assert "TSHIRT-GRY-S (wanted 999, 50 left)" in short.body
    assert {paid.recipient, failed.recipient, short.recipient} == {"c1@example.com"}
