"""One order's story, told by its events and by one grep of its id across every service's log."""

from __future__ import annotations

import json
import secrets
from typing import Any
from uuid import UUID

import orjson
import pytest

from tests.support.api import one_line_order
from tests.support.products import add_product
from tests.support.system import System

pytestmark = pytest.mark.e2e


async def place_with_request_id(system: System, request_id: str) -> tuple[str, str]:
    """An order placed with this X-Request-ID: its id, and the X-Request-ID answered."""
    sku = await add_product(system.pool, stock=5)
    response = await system.client.post(
        "/orders",
        json=one_line_order(sku),
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 201, response.text
    return response.json()["id"], response.headers["X-Request-ID"]


async def events_of(system: System, order_id: str) -> list[dict[str, Any]]:
    rows = await system.pool.fetch(
        "SELECT payload::text FROM event_outbox WHERE order_id = $1 ORDER BY id", UUID(order_id)
    )
    return [orjson.loads(row["payload"]) for row in rows]


async def test_every_event_of_an_order_carries_its_request_id_and_names_its_cause(
    system: System,
) -> None:
    request_id = f"abc-123-{secrets.token_hex(4)}"

    order_id, answered = await place_with_request_id(system, request_id)
    final = await system.wait_for_final_status(order_id)
    await system.wait_until_settled(order_id)

    assert answered == request_id
    assert final["status"] == "paid"
    placed, reserved, completed = await events_of(system, order_id)
    assert [e["event_type"] for e in (placed, reserved, completed)] == [
        "OrderPlaced",
        "InventoryReserved",
        "PaymentCompleted",
    ]
    assert {e["correlation_id"] for e in (placed, reserved, completed)} == {request_id}
    assert placed["causation_id"] is None
    assert reserved["causation_id"] == placed["event_id"]
    assert completed["causation_id"] == reserved["event_id"]


async def test_one_grep_of_an_order_id_finds_its_story_in_json_lines_with_its_request_id(
    system: System,
) -> None:
    request_id = f"grep-{secrets.token_hex(4)}"
    order_id, _ = await place_with_request_id(system, request_id)
    await system.wait_for_final_status(order_id)
    await system.wait_until_settled(order_id)

    found: dict[str, list[dict[str, Any]]] = {}
    for name, process in system.processes.items():
        for line in process.log().splitlines():
            if order_id in line:
                found.setdefault(name, []).append(json.loads(line))

    assert {"api", "inventory", "payment", "notification"} <= set(found)
    for service, records in found.items():
        for record in records:
            assert record["service"] == service, record
            assert record["correlation_id"] == request_id, record
            if service != "api":
                # A consumer's line is about one event of the order.
                assert record["order_id"] == order_id, record
                assert UUID(record["event_id"]), record
    messages = [record["msg"] for records in found.values() for record in records]
    assert any(m.startswith(f"order {order_id} placed by C100") for m in messages)
    assert any(m.startswith(f"RESERVED order {order_id}") for m in messages)
    assert any(m.startswith("COMPLETED payment of 10.00 for order") for m in messages)
    assert any(m.startswith("Order Paid: e-mail sent to c1***@e***.com") for m in messages)
