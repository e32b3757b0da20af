"""A new service joins by binding its own queue to acme.events: the example sees every event."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.processes import ServiceProcess
from tests.support.products import add_product
from tests.support.system import System

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "analytics_counter.py"


async def test_analytics_example_sees_every_event_of_an_order(system: System) -> None:
    analytics = ServiceProcess([sys.executable, str(EXAMPLE)], system.environ, "analytics").start()
    try:
        await analytics.wait_for_log("ready: consuming analytics.all-events")
        sku = await add_product(system.pool, stock=5)

        order = await system.place_order([(sku, 1)])
        await system.wait_until_settled(order["id"])

        for routing_key, event_type in [
            ("order.placed", "OrderPlaced"),
            ("inventory.reserved", "InventoryReserved"),
            ("payment.completed", "PaymentCompleted"),
        ]:
            await analytics.wait_for_log(f"EVENT {routing_key} {event_type} order={order['id']}")
    finally:
        assert await analytics.stop() == 0
    assert "counted {" in analytics.log()
