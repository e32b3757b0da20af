"""Addresses masked in text that is logged but not meant to hold one."""

from __future__ import annotations

import pytest

from acme_orders.ops.privacy import mask_emails_in


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("C100", "C100"),
        ("c100@example.com", "c1***@example.com"),
        ("crm:c100@example.com/2", "cr***@example.com/2"),
        ("a@b and c@d", "a***@b and c***@d"),
        ("@", "@"),
    ],
)
def test_addresses_in_a_customer_id_are_masked_and_other_ids_kept(text: str, logged: str) -> None:
    assert mask_emails_in(text) == logged
