"""The reconciliation audit's decisions (ops/audit.py) and where orders wait (ops/waiting.py),
over rows as their statements return them: no database."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from acme_orders.ops import audit
from acme_orders.ops.dead_letters import DeadLetter
from acme_orders.ops.waiting import WaitStage, dead_letters_by_event, waiting_order

NOW = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "shape", "fault"),
    [
        # status, (any reservation, held, released, complete): the fault or None
        ("paid", (True, True, False, True), None),
        ("paid", (True, True, True, True), "reservation_released"),
        ("paid", (True, False, True, True), "reservation_released"),
        ("paid", (True, True, False, False), "reservation_missing"),
        ("paid", (False, False, False, False), "reservation_missing"),
        ("payment_failed", (True, False, True, True), None),
        ("payment_failed", (True, True, True, True), "reservation_held"),
        ("payment_failed", (False, False, False, False), "reservation_missing"),
        ("cancelled", (False, False, False, False), None),
        ("cancelled", (True, False, True, True), None),
        ("cancelled", (True, True, False, True), "reservation_held"),
        ("out_of_stock", (False, False, False, False), None),
        ("out_of_stock", (True, False, True, False), "reservation_unexpected"),
    ],
)
def test_each_final_status_calls_for_its_reservations(
    status: str, shape: tuple[bool, bool, bool, bool], fault: str | None
) -> None:
    assert audit.reservation_fault(status, *shape) == fault


def test_the_faulty_shapes_are_exactly_those_the_rule_calls_faults() -> None:
    shapes = audit.faulty_reservation_shapes()

    assert ("paid", True, True, False, True) not in shapes
    assert ("paid", True, True, True, True) in shapes
    assert all(audit.reservation_fault(*shape) for shape in shapes)
    # 4 statuses x 16 shapes, less the ones that are fine.
    fine = [
        (status, *flags)
        for status in ("paid", "payment_failed", "out_of_stock", "cancelled")
        for flags in itertools.product((False, True), repeat=4)
        if audit.reservation_fault(status, *flags) is None
    ]
    assert len(shapes) + len(fine) == 64


def test_reservation_findings_add_up_the_shapes_of_a_kind() -> None:
    first, second, third = uuid4(), uuid4(), uuid4()
    shape = {"any_reservation": True, "held": True, "complete": True}
    rows: list[dict[str, Any]] = [
        {"status": "paid", **shape, "released": False, "orders": 1000, "first_ids": None},
        {"status": "paid", **shape, "released": True, "orders": 2, "first_ids": [first, second]},
        {
            "status": "paid",
            "any_reservation": True,
            "held": False,
            "released": True,
            "complete": True,
            "orders": 1,
            "first_ids": [third],
        },
    ]

    (finding,) = audit.reservation_findings(rows)

    assert finding.kind == "reservation_released"
    assert finding.count == 3
    assert [item.order_id for item in finding.items] == [str(first), str(second), str(third)]


def test_stock_must_be_start_plus_added_minus_held() -> None:
    rows = [
        {"sku": "A", "stock_qty": 7, "starts": 1, "starting": 10, "added": 2, "held": 5},
        {"sku": "B", "stock_qty": 8, "starts": 1, "starting": 10, "added": 0, "held": 1},
        {"sku": "C", "stock_qty": 3, "starts": 0, "starting": 0, "added": 0, "held": 0},
    ]

    mismatch, unrecorded = audit.stock_findings(rows, limit=10)

    assert mismatch.kind == "stock_mismatch"
    assert [item.sku for item in mismatch.items] == ["B"]
    assert mismatch.items[0].detail == "stock 8, expected 9 = starting 10 + added 0 - held 1"
    assert unrecorded.kind == "stock_unrecorded"
    assert [item.sku for item in unrecorded.items] == ["C"]


def test_stock_findings_list_the_first_but_count_all() -> None:
    rows = [
        {"sku": f"S{n}", "stock_qty": 0, "starts": 1, "starting": 1, "added": 0, "held": 0}
        for n in range(5)
    ]

    (finding,) = audit.stock_findings(rows, limit=2)

    assert finding.count == 5
    assert len(finding.items) == 2


@pytest.mark.parametrize(
    ("notifications", "kind_matches", "fault"),
    [
        (1, True, None),
        (0, False, "notification_missing"),
        (2, True, "notification_duplicate"),
        (1, False, "notification_wrong_kind"),
    ],
)
def test_one_notification_of_the_right_kind(
    notifications: int, kind_matches: bool, fault: str | None
) -> None:
    assert audit.notification_fault(notifications, kind_matches) == fault


def test_every_final_status_has_its_notification_kind() -> None:
    assert audit.NOTIFICATION_KIND_FOR_STATUS == {
        "paid": "order_paid",
        "payment_failed": "payment_failed",
        "out_of_stock": "out_of_stock",
        "cancelled": "order_cancelled",
    }


def test_events_are_expected_of_every_service_bound_to_them() -> None:
    expected = set(audit.expected_handlers())

    assert ("order.placed", "inventory") in expected
    assert ("payment.failed", "inventory") in expected
    assert ("payment.failed", "notification") in expected
    assert ("order.cancelled", "inventory") in expected
    assert ("order.cancelled", "notification") in expected
    assert ("inventory.reserved", "payment") in expected
    # Nobody consumes InventoryReleased: nothing is expected of it.
    assert not [pair for pair in expected if pair[0] == "inventory.released"]


def test_unhandled_events_name_the_queue_they_wait_in() -> None:
    event_id, order_id = uuid4(), uuid4()
    rows = [
        {
            "event_type": "PaymentFailed",
            "service": "inventory",
            "events": 3,
            "first_event_ids": [event_id],
            "first_order_ids": [order_id],
        }
    ]

    (finding,) = audit.event_findings(rows)

    assert finding.count == 3
    assert finding.items[0].as_dict() == {
        "order_id": str(order_id),
        "event_id": str(event_id),
        "service": "inventory",
        "queue": "inventory.payment.failed",
        "detail": "PaymentFailed not handled by inventory",
    }


def test_empty_dead_letter_queues_are_no_finding() -> None:
    assert audit.dead_letter_findings({"a.dlq": 0}) == []
    (finding,) = audit.dead_letter_findings({"a.dlq": 0, "b.dlq": 2})
    assert finding.count == 2
    assert finding.items[0].queue == "b.dlq"


def test_the_json_report_has_every_finding_with_its_kind_and_ids() -> None:
    order_id = str(uuid4())
    report = audit.Report(
        checked=audit.Checked(checked_at=NOW, final_orders=10, products=2, events=30, queues=5),
        findings=(
            audit.Finding(
                "notification_missing",
                1,
                "final orders without a notification",
                (audit.Item(order_id=order_id, detail="paid, wants order_paid"),),
            ),
        ),
        outbox_retention=timedelta(days=7),
        processed_events_retention=timedelta(days=30),
    )

    as_json = audit.report_as_json(report)

    assert as_json["clean"] is False
    assert as_json["findings"] == [
        {
            "kind": "notification_missing",
            "count": 1,
            "summary": "final orders without a notification",
            "items": [{"order_id": order_id, "detail": "paid, wants order_paid"}],
        }
    ]
    assert as_json["retention"]["outbox_retention_seconds"] == 7 * 86400
    text = audit.render_report(report)
    assert f"order_id {order_id}: paid, wants order_paid" in text
    assert "OUTBOX_RETENTION (7d)" in text
    assert text.endswith("not clean: 1 findings of 1 kinds")


def test_a_clean_report_says_so() -> None:
    report = audit.Report(checked=audit.Checked(checked_at=NOW))
    assert report.clean
    assert audit.render_report(report).endswith("clean: the books balance")
    assert audit.report_as_json(report)["findings"] == []


def _row(**values: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": uuid4(),
        "status": "reserved",
        "placed_at": NOW - timedelta(hours=1),
        "event_id": uuid4(),
        "event_type": "InventoryReserved",
        "routing_key": "inventory.reserved",
        "outbox_status": "SENT",
        "written_at": NOW - timedelta(minutes=59),
        "published_at": NOW - timedelta(minutes=58),
        "handled_by": [],
    }
    row.update(values)
    return row


def test_a_published_event_nobody_handled_waits_in_the_broker() -> None:
    waiting = waiting_order(_row(), {})

    assert waiting.stage is WaitStage.BROKER
    assert waiting.since == NOW - timedelta(minutes=58)
    assert waiting.services == ("payment",)
    assert waiting.queues == ("payment.inventory.reserved",)
    assert waiting.describe() == (
        "InventoryReserved published, not handled by payment (payment.inventory.reserved)"
    )


def test_a_dead_lettered_event_is_found_in_its_queue_with_the_reason() -> None:
    row = _row()
    parked_at = NOW - timedelta(minutes=50)
    letters = dead_letters_by_event(
        [
            DeadLetter(
                queue="payment.inventory.reserved",
                message_id=str(row["event_id"]),
                event_type="InventoryReserved",
                order_id=str(row["id"]),
                reason="card gateway said no",
                dead_lettered_at=parked_at,
                body_preview="{}",
            ),
        ]
    )

    waiting = waiting_order(row, letters)

    assert waiting.stage is WaitStage.DEAD_LETTER
    assert waiting.since == parked_at
    assert waiting.dead_letter_reason == "card gateway said no"
    assert waiting.describe() == (
        "InventoryReserved parked in payment.inventory.reserved.dlq: card gateway said no"
    )


def test_the_other_stages() -> None:
    assert waiting_order(_row(outbox_status="NEW"), {}).stage is WaitStage.OUTBOX
    assert waiting_order(_row(outbox_status="NEW"), {}).since == NOW - timedelta(minutes=59)
    assert waiting_order(_row(handled_by=["payment"]), {}).stage is WaitStage.HANDLED
    without = waiting_order(_row(event_id=None, outbox_status=None), {})
    assert without.stage is WaitStage.NO_EVENT
    assert without.since == without.placed_at
