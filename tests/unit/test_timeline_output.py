"""How `acme-orders trace` writes a timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from acme_orders.core.orders import OrderStatus
from acme_orders.ops.timeline import Handling, Timeline, TimelineEvent, render_timeline

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
        (Handling("inventory", "inventory.order.placed", at(8.25)),),
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
        "       +0.0 ms  OrderPlaced        order.placed        by api        published +3.1 ms",
        "                  inventory  handled +8.2 ms  (queue inventory.order.placed)",
        "       +8.2 ms  InventoryReserved  inventory.reserved  by inventory  "
        "published +1,234.5 ms",
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
    ]
    assert lines[2].strip() == "analytics  handled +7.0 ms"
    assert lines[3] == "1 event"
