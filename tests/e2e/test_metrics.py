"""The metrics of the real processes after orders went through: the API's /metrics and each
worker's own /metrics and /health."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from acme_orders.core.orders import OrderStatus
from acme_orders.services import WORKERS
from tests.support.products import add_product
from tests.support.system import System
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

ORDERS = 3

# (sample name, labels) -> value
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape_all(system: System) -> dict[str, Samples]:
    """The samples of the API and of every worker, by service."""
    scraped = {"api": await scrape(system.client, "/metrics")}
    async with httpx.AsyncClient(timeout=5) as client:
        for name, port in system.metrics_ports.items():
            scraped[name] = await scrape(client, f"http://127.0.0.1:{port}/metrics")
    return scraped


async def scrape(client: httpx.AsyncClient, url: str) -> Samples:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


# What N paid orders move, at least: (service, sample name, labels).
EXPECTED_PER_ORDER: list[tuple[str, str, Mapping[str, str]]] = [
    (
        "api",
        "acme_http_request_seconds_count",
        {"method": "POST", "route": "/orders", "status": "201"},
    ),
    ("api", "acme_events_emitted_total", {"service": "api", "event_type": "OrderPlaced"}),
    *(
        ("publisher", "acme_outbox_published_total", {"event_type": event_type})
        for event_type in ("OrderPlaced", "InventoryReserved", "PaymentCompleted")
    ),
    (
        "inventory",
        "acme_events_consumed_total",
        {"service": "inventory", "event_type": "OrderPlaced", "outcome": "handled"},
    ),
    (
        "inventory",
        "acme_events_emitted_total",
        {"service": "inventory", "event_type": "InventoryReserved"},
    ),
    (
        "payment",
        "acme_events_consumed_total",
        {"service": "payment", "event_type": "InventoryReserved", "outcome": "handled"},
    ),
    (
        "payment",
        "acme_events_emitted_total",
        {"service": "payment", "event_type": "PaymentCompleted"},
    ),
    (
        "notification",
        "acme_events_consumed_total",
        {"service": "notification", "event_type": "PaymentCompleted", "outcome": "handled"},
    ),
]
# Moved at least once by the orders: one batch may take several of them.
EXPECTED_PER_BATCH: list[tuple[str, str, Mapping[str, str]]] = [
    ("publisher", "acme_outbox_relay_seconds_count", {}),
    *(
        (service, name, {"service": service, "queue": queue})
        for service, queue in (
            ("inventory", "inventory.order.placed"),
            ("payment", "payment.inventory.reserved"),
            ("notification", "notification.order.outcome"),
        )
        for name in ("acme_handler_seconds_count", "acme_consumer_batch_size_count")
    ),
]


async def test_metrics_count_the_orders_that_went_through(system: System) -> None:
    sku = await add_product(system.pool, stock=100)
    before = await scrape_all(system)

    orders = [await system.place_order([(sku, 1)]) for _ in range(ORDERS)]
    for order in orders:
        assert (await system.wait_for_final_status(order["id"]))["status"] == "paid"

    def moved(after: dict[str, Samples]) -> list[str]:
        """What has not moved yet (a worker counts right after its commit, which the order's
        status may show a moment earlier)."""
        behind = []
        for service, name, labels in EXPECTED_PER_ORDER:
            delta = value(after[service], name, **labels) - value(before[service], name, **labels)
            if delta < ORDERS:
                behind.append(f"{service} {name}{dict(labels)} moved by {delta}")
        for service, name, labels in EXPECTED_PER_BATCH:
            if value(after[service], name, **labels) <= value(before[service], name, **labels):
                behind.append(f"{service} {name}{dict(labels)} did not move")
        return behind

    async def all_moved() -> dict[str, Samples] | None:
        after = await scrape_all(system)
        return None if moved(after) else after

    try:
        after = await wait_until(all_moved, deadline=15, what="every counter to move")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {moved(await scrape_all(system))}") from None

    latency_sum = value(
        after["api"],
        "acme_http_request_seconds_sum",
        method="POST",
        route="/orders",
        status="201",
    )
    assert latency_sum > 0
    # The gauges the publisher samples: present, each status of orders included.
    publisher = after["publisher"]
    assert ("acme_outbox_backlog", frozenset()) in publisher
    assert value(publisher, "acme_outbox_oldest_new_age_seconds") >= 0
    statuses = {dict(labels)["status"] for name, labels in publisher if name == "acme_orders"}
    assert statuses == {status.value for status in OrderStatus}
    # Exported once: only the publisher samples them.
    for service in ("api", "inventory", "payment", "notification"):
        assert ("acme_outbox_backlog", frozenset()) not in after[service], service


async def test_every_worker_answers_health_when_its_connections_are_up(system: System) -> None:
    assert set(system.metrics_ports) == set(WORKERS)
    async with httpx.AsyncClient(timeout=5) as client:
        for name, port in system.metrics_ports.items():
            response = await client.get(f"http://127.0.0.1:{port}/health")

            assert response.status_code == 200, (name, response.text)
            assert response.json() == {"status": "ok", "database": "up", "broker": "up"}, name
            assert (await client.get(f"http://127.0.0.1:{port}/nothing")).status_code == 404
