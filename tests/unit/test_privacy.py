"""Addresses masked in text that is logged but not meant to hold one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acme_orders.ops.privacy import mask_email, mask_emails_in


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("C100", "C100"),
        ("c100@example.com", "c1***@e***.com"),
        ("crm:c100@example.com/2", "cr***@e***.com/2"),
        ("a@b and c@d", "a***@b*** and c***@d***"),
        ("sent to c100@mail.example.co.uk today", "sent to c1***@m***.uk today"),
        ("@", "@"),
    ],
)
def test_addresses_in_a_customer_id_are_masked_and_other_ids_kept(text: str, logged: str) -> None:
    assert mask_emails_in(text) == logged


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("c100@example.com", "c1***@e***.com"),
        ("a@example.com", "a***@e***.com"),
        ("jane.doe@mail.example.co.uk", "ja***@m***.uk"),
        ("root@localhost", "ro***@l***"),
        ("c100@", "c1***@***"),
        ("no-at-sign", "***"),
    ],
)
def test_mask_email_keeps_two_characters_the_domains_first_and_its_top_level(
    address: str, masked: str
) -> None:
    assert mask_email(address) == masked


# Each part of an address from an alphabet of its own: a part found in the masked text cannot be
# there by coincidence, as a piece of another part.
locals_ = st.text("abcdef0123_+", min_size=1, max_size=20)
labels = st.text("ghijklmn-", min_size=1, max_size=12)
top_levels = st.text("uvwxyz", min_size=2, max_size=6)
domains = st.tuples(st.lists(labels, min_size=1, max_size=4), top_levels).map(
    lambda parts: ".".join([*parts[0], parts[1]])
)


@given(local=locals_, domain=domains)
def test_no_local_part_or_domain_label_longer_than_its_kept_prefix_survives(
    local: str, domain: str
) -> None:
    masked = mask_email(f"{local}@{domain}")
    *lower_labels, top_level = domain.split(".")

    assert masked.endswith("." + top_level)
    if len(local) > 2:
        assert local not in masked
    for label in lower_labels:
        if len(label) > 1:
            assert label not in masked


rests = st.tuples(st.text("abcdef0123_+", max_size=20), st.text("ghijklmn-", max_size=12))


@given(
    kept=st.tuples(st.text("abcdef0123_+", min_size=2, max_size=2), labels, top_levels),
    first=st.tuples(rests, st.lists(labels, max_size=3)),
    second=st.tuples(rests, st.lists(labels, max_size=3)),
)
def test_what_survives_of_an_address_is_only_its_kept_prefixes_and_top_level(
    kept: tuple[str, str, str],
    first: tuple[tuple[str, str], list[str]],
    second: tuple[tuple[str, str], list[str]],
) -> None:
    # Two addresses alike in the kept parts (2 characters, 1, the top level) and different in
    # everything else are masked alike: nothing else of them reaches the log.
    local_start, label_start, top_level = kept

    def logged(rest: tuple[tuple[str, str], list[str]]) -> str:
        (local_rest, label_rest), middle_labels = rest
        domain = ".".join([label_start[:1] + label_rest, *middle_labels, top_level])
        return mask_emails_in(f"customer {local_start}{local_rest}@{domain} wrote")

    assert logged(first) == logged(second)
