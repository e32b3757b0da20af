"""How the board turns its rows into the JSON its page draws: the chart's rates and latencies, and
the stuck orders with where they wait."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from acme_orders.ops.waiting import WaitingOrder, WaitStage
from acme_orders.order_api.routes.board import chart_of, stuck_of

START = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)


def bucket(
    i: int, placed: int, finished: int, p50: float | None, p99: float | None, read: int
) -> dict[str, Any]:
    return {
        "starts_at": START + timedelta(seconds=5 * i),
        "placed": placed,
        "finished": finished,
        "p50": None if p50 is None else timedelta(seconds=p50),
        "p99": None if p99 is None else timedelta(seconds=p99),
        "read": read,
    }


def test_the_chart_gives_rates_per_second_and_latencies_in_seconds() -> None:
    rows = [bucket(0, 10, 0, None, None, 30), bucket(1, 20, 15, 0.04, 0.25, 30)]

    chart = chart_of(rows, 5.0, timedelta(minutes=5), limit=50_000)

    assert chart["step_seconds"] == 5.0
    assert chart["window_seconds"] == 300
    assert chart["capped"] is False
    assert chart["points"] == [
        {
            "at": START,
            "placed_per_second": 2.0,
            "finished_per_second": 0.0,
            "p50_seconds": None,
            "p99_seconds": None,
        },
        {
            "at": START + timedelta(seconds=5),
            "placed_per_second": 4.0,
            "finished_per_second": 3.0,
            "p50_seconds": 0.04,
            "p99_seconds": 0.25,
        },
    ]


def test_the_chart_says_when_it_read_as_many_orders_as_it_may() -> None:
    assert chart_of([bucket(0, 1, 1, 1, 1, 100)], 5.0, timedelta(minutes=5), 100)["capped"]
    assert chart_of([], 5.0, timedelta(minutes=5), 100)["capped"] is False


def test_a_stuck_order_says_where_it_waits_without_an_address() -> None:
    order = WaitingOrder(
        UUID(int=1),
        "reserved",
        START,
        WaitStage.DEAD_LETTER,
        START + timedelta(seconds=3),
        "InventoryReserved",
        UUID(int=2),
        services=("payment",),
        queues=("payment.inventory.reserved",),
        dead_letter_reason="no card on file for c100@example.com",
    )

    [shown] = stuck_of([order], 60.0, 20)["orders"]

    assert shown["stage"] == "dead_letter"
    assert (shown["services"], shown["queues"]) == (["payment"], ["payment.inventory.reserved"])
    assert "payment.inventory.reserved.dlq" in shown["where"]
    assert "c100@example.com" not in shown["where"]
