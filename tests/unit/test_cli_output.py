"""How the operator commands write durations."""

from __future__ import annotations

from datetime import timedelta

import pytest

from acme_orders.ops.commands import human_age


@pytest.mark.parametrize(
    ("age", "written"),
    [
        (timedelta(seconds=2.34), "2.3s"),
        (timedelta(seconds=59.99), "1m"),
        (timedelta(seconds=90), "1m 30s"),
        (timedelta(hours=3, minutes=5, seconds=9), "3h 5m"),
        (timedelta(hours=1, seconds=5), "1h"),
        (timedelta(days=7), "7d"),
        (timedelta(days=2, hours=4, minutes=3), "2d 4h"),
    ],
)
def test_human_age(age: timedelta, written: str) -> None:
    assert human_age(age) == written
