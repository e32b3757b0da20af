"""How `acme-orders trace` writes a timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from acme_orders.core.orders import OrderStatus
from acme_orders.ops.timeline import (
    Handling,
    HopLags,
    Timeline,
    TimelineEvent,
    hop_lags,
    render_timeline,
)

ORDER = UUID("71f5c2aa-0000-4000-8000-000000002778")
PLACED = datetime(2025, 5, 1, 10, 0, 3, 412000, tzinfo=UTC)


def at(ms: float) -> datetime:
    return PLACED + timedelta(milliseconds=ms)


def timeline_of(*events: TimelineEvent, status: OrderStatus = OrderStatus.PAID) -> Timeline:
    return Timeline(order_id=ORDER, status=status, placed_at=PLACED, events=events)


def test_each_event_on_a_line_with_its_handlers_indented_in_ms_since_placement() -> None:
    placed = TimelineEvent(
        UUID(int=1),
        "OrderPlaced",
        "order.placed",
        "api",
        at(-0.01),
        at(0),
        at(3.14),
        (Handling("inventory", "inventory.order.placed", at(8.25), at(7.0)),),
    )
    reserved = TimelineEvent(
        UUID(int=2),
        "InventoryReserved",
        "inventory.reserved",
        "inventory",
        at(8),
        at(8.2),
        at(1234.5),
        (Handling("payment", "payment.inventory.reserved", None),),
    )
    released = TimelineEvent(
        UUID(int=3), "InventoryReleased", "inventory.released", "inventory", at(9), at(9), None, ()
    )

    text = render_timeline(timeline_of(placed, reserved, released, status=OrderStatus.RESERVED))

    assert text.splitlines() == [
        f"order {ORDER}: reserved, placed 2025-05-01T10:00:03.412+00:00",
        "       +0.0 ms  OrderPlaced        order.placed        by api        published +3.1 ms"
        "  (outbox 3.1 ms)",
        "                  inventory  handled +8.2 ms  (broker 3.9 ms, handling 1.2 ms)"
        "  (queue inventory.order.placed)",
        "       +8.2 ms  InventoryReserved  inventory.reserved  by inventory  "
        "published +1,234.5 ms  (outbox 1,226.3 ms)",
        "                  payment  not handled yet  (queue payment.inventory.reserved)",
        "       +9.0 ms  InventoryReleased  inventory.released  by inventory  not published yet",
        "                  no consumer",
        "3 events",
    ]


def test_an_order_whose_events_were_purged_says_so() -> None:
    text = render_timeline(timeline_of())

    assert text.splitlines()[1] == (
        "no events left in the outbox (rows are purged OUTBOX_RETENTION after publishing)"
    )


def test_a_handler_without_a_queue_and_an_unknown_emitter() -> None:
    odd = TimelineEvent(
        UUID(int=4),
        "SomethingHappened",
        "something.happened",
        None,
        at(5),
        at(5),
        at(6),
        (Handling("analytics", None, at(7)),),
    )

    lines = render_timeline(timeline_of(odd)).splitlines()

    assert lines[1].split() == [
        "+5.0",
        "ms",
        "SomethingHappened",
        "something.happened",
        "by",
        "?",
        "published",
        "+6.0",
        "ms",
        "(outbox",
        "1.0",
        "ms)",
    ]
    # Recorded before processed_events had received_at: its two hops are unknown.
    assert lines[2].strip() == "analytics  handled +7.0 ms  (broker unknown, handling unknown)"
    assert lines[3] == "1 event"


def test_each_hop_lag_runs_from_one_recorded_time_to_the_next() -> None:
    event = TimelineEvent(
        UUID(int=5),
        "OrderPlaced",
        "order.placed",
        "api",
        at(0),
        at(0),
        at(2.5),
        (Handling("inventory", "inventory.order.placed", at(10), at(4)),),
    )
    [handling] = event.handled_by

    lags = hop_lags(event, handling)

    assert lags.outbox == pytest.approx(0.0025)
    assert lags.broker == pytest.approx(0.0015)
    assert lags.handling == pytest.approx(0.006)
    assert hop_lags(event, None) == HopLags(lags.outbox, None, None)


def test_a_hop_not_reached_yet_is_unknown_and_none_is_below_zero() -> None:
    waiting = TimelineEvent(
        UUID(int=6), "OrderPlaced", "order.placed", "api", at(0), at(0), None, ()
    )
    # Taken by the consumer a hair before the publisher's claim stamp: 0, not negative.
    early = TimelineEvent(
        UUID(int=7),
        "OrderPlaced",
        "order.placed",
        "api",
        at(0),
        at(0),
        at(3),
        (Handling("inventory", "inventory.order.placed", at(5), at(2.9)),),
    )
    unhandled = Handling("inventory", "inventory.order.placed", None)

    assert hop_lags(waiting, unhandled) == HopLags(None, None, None)
    assert hop_lags(early, early.handled_by[0]).broker == 0.0
    assert hop_lags(early, unhandled).handling is None
