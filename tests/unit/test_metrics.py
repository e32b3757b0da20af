"""The metrics' definitions and the pure parts of recording them: counting a consumer's batch,
the API's request latency by route template, a worker's /metrics and /health app."""

from __future__ import annotations

import secrets
from uuid import uuid4

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import REGISTRY

from acme_orders.core.events import InventoryReleased, OrderPlaced
from acme_orders.core.observability.metrics import (
    ALL_METRICS,
    OUTCOMES,
    ConsumerMetrics,
    event_type_label,
    export_publisher_metrics,
    exported_names,
    record_relayed,
)
from acme_orders.core.observability.metrics_server import ServiceHealth, metrics_port, worker_app
from acme_orders.core.settings import Settings
from acme_orders.order_api.http_metrics import HttpMetrics


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def consumed(service: str, event_type: str, outcome: str) -> float:
    return sample(
        "acme_events_consumed_total", service=service, event_type=event_type, outcome=outcome
    )


def placed() -> OrderPlaced:
    return OrderPlaced.model_validate(
        {
            "order_id": str(uuid4()),
            "customer_id": "C1",
            "email": "c1@example.com",
            "items": [{"sku": "A", "qty": 1, "unit_price": "1.00"}],
            "total": "1.00",
        }
    )


def released() -> InventoryReleased:
    return InventoryReleased.model_validate(
        {"order_id": str(uuid4()), "items": [{"sku": "A", "qty": 1}]}
    )


def unique_service() -> str:
    # The registry is the process's: each test counts under a service name of its own.
    return f"unit-{secrets.token_hex(4)}"


def test_every_metric_is_named_acme_and_explains_itself() -> None:
    names = [family.name for metric in ALL_METRICS for family in metric.describe()]

    assert len(names) == len(set(names))
    assert all(name.startswith("acme_") for name in names)
    for metric in ALL_METRICS:
        for family in metric.describe():
            assert len(family.documentation) > 30, family.name


def test_exported_names_are_what_prometheus_scrapes() -> None:
    names = exported_names()

    assert "acme_events_consumed_total" in names
    assert "acme_handler_seconds_bucket" in names
    assert "acme_handler_seconds_count" in names
    assert "acme_outbox_backlog" in names
    assert "acme_events_consumed" not in names


def test_event_type_label_is_bounded_to_the_catalogue() -> None:
    assert event_type_label("OrderPlaced") == "OrderPlaced"
    assert event_type_label("DropTables") == "other"
    assert event_type_label(None) == "other"
    assert event_type_label(42) == "other"


def test_a_batch_of_new_events_counts_as_handled_with_one_increment_per_type() -> None:
    service = unique_service()
    metrics = ConsumerMetrics(service, "q", ["OrderPlaced"])
    events = [placed() for _ in range(5)]

    metrics.settled(events, [])

    assert consumed(service, "OrderPlaced", "handled") == 5
    assert consumed(service, "OrderPlaced", "duplicate") == 0


def test_duplicates_and_repeats_within_a_batch_count_as_duplicate() -> None:
    service = unique_service()
    metrics = ConsumerMetrics(service, "q", ["OrderPlaced", "InventoryReleased"])
    new, old, other = placed(), placed(), released()
    # `old` handled before, and `new` twice in the batch: its second copy changes nothing.
    metrics.settled([new, other], [old, new])

    assert consumed(service, "OrderPlaced", "handled") == 1
    assert consumed(service, "OrderPlaced", "duplicate") == 2
    assert consumed(service, "InventoryReleased", "handled") == 1


def test_outcomes_and_emitted_events_are_counted_by_type() -> None:
    service = unique_service()
    metrics = ConsumerMetrics(service, "q", ["OrderPlaced"])

    metrics.consumed("OrderPlaced", "retried")
    metrics.consumed("other", "dead_lettered", 2)
    metrics.consumed("PaymentFailed", "skipped")  # a type the consumer has no route for
    metrics.emitted([released(), released(), placed()])
    metrics.emitted([])

    assert consumed(service, "OrderPlaced", "retried") == 1
    assert consumed(service, "other", "dead_lettered") == 2
    assert consumed(service, "PaymentFailed", "skipped") == 1
    emitted = "acme_events_emitted_total"
    assert sample(emitted, service=service, event_type="InventoryReleased") == 2
    assert sample(emitted, service=service, event_type="OrderPlaced") == 1
    assert set(OUTCOMES) == {
        "handled",
        "duplicate",
        "retried",
        "dead_lettered",
        "skipped",
        "ignored",
        "given_back",
    }


def test_relayed_batches_count_each_event_type() -> None:
    export_publisher_metrics()
    export_publisher_metrics()  # twice is harmless
    before = {
        t: sample("acme_outbox_published_total", event_type=t) for t in ("OrderPlaced", "other")
    }
    count_before = sample("acme_outbox_relay_seconds_count")

    record_relayed(["OrderPlaced", "OrderPlaced", "TestHappened"], 0.004)

    assert (
        sample("acme_outbox_published_total", event_type="OrderPlaced") == before["OrderPlaced"] + 2
    )
    assert sample("acme_outbox_published_total", event_type="other") == before["other"] + 1
    assert sample("acme_outbox_relay_seconds_count") == count_before + 1


def test_each_worker_has_its_own_default_port_apart_from_the_api() -> None:
    settings = Settings()
    ports = [
        metrics_port(settings, s) for s in ("publisher", "inventory", "payment", "notification")
    ]

    assert len(set(ports)) == 4
    assert settings.api_port not in ports
    assert all(ports)
    # A service without a setting (examples/analytics_counter.py) serves nothing.
    assert metrics_port(settings, "analytics") == 0


def requests_of(method: str, route: str, status: str) -> float:
    return sample("acme_http_request_seconds_count", method=method, route=route, status=status)


async def test_http_latency_is_recorded_by_route_template_and_status() -> None:
    router = APIRouter(prefix=f"/things{secrets.token_hex(3)}")

    @router.get("/{thing_id}")
    async def get_thing(thing_id: int) -> dict[str, int]:
        return {"id": thing_id}

    @router.get("/{thing_id}/broken")
    async def broken(thing_id: int) -> None:
        raise RuntimeError("boom")

    app = FastAPI()
    app.include_router(router)
    app.add_middleware(HttpMetrics)
    template = f"{router.prefix}/{{thing_id}}"
    before = {
        "ok": requests_of("GET", template, "200"),
        "bad": requests_of("GET", template, "422"),
        "error": requests_of("GET", f"{template}/broken", "500"),
        "unmatched": requests_of("GET", "unmatched", "404"),
    }
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for thing_id in (1, 2, 3):
            assert (await client.get(f"{router.prefix}/{thing_id}")).status_code == 200
        assert (await client.get(f"{router.prefix}/x")).status_code == 422
        assert (await client.get(f"{router.prefix}/1/broken")).status_code == 500
        assert (await client.get("/nowhere")).status_code == 404

    assert requests_of("GET", template, "200") == before["ok"] + 3
    assert requests_of("GET", template, "422") == before["bad"] + 1
    assert requests_of("GET", f"{template}/broken", "500") == before["error"] + 1
    assert requests_of("GET", "unmatched", "404") == before["unmatched"] + 1


class FixedHealth(ServiceHealth):
    def __init__(self, status: str) -> None:
        super().__init__()
        self.status = status

    async def check(self) -> dict[str, str]:
        return {"status": self.status, "database": "up", "broker": "up"}


@pytest.mark.parametrize(("status", "code"), [("ok", 200), ("unavailable", 503)])
async def test_worker_app_serves_health_metrics_and_nothing_else(status: str, code: int) -> None:
    transport = httpx.ASGITransport(app=worker_app(FixedHealth(status)))

    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
        health = await client.get("/health")
        metrics = await client.get("/metrics")
        other = await client.get("/orders")

    assert health.status_code == code
    assert health.json()["status"] == status
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "acme_events_consumed_total" in metrics.text or "# HELP acme_" in metrics.text
    assert other.status_code == 404


async def test_health_without_connections_is_unavailable() -> None:
    assert await ServiceHealth().check() == {
        "status": "unavailable",
        "database": "down",
        "broker": "down",
    }
