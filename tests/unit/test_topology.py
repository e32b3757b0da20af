"""Who publishes and who consumes each event: the catalogue the timeline, the board and the
AsyncAPI document share, against the services' queues and the README."""

from __future__ import annotations

import pytest

from acme_orders.core import topology
from acme_orders.core.events import (
    EVENT_TYPES,
    Event,
    InventoryReleased,
    InventoryReserved,
    OrderCancelled,
    OrderOutOfStock,
    OrderPlaced,
    PaymentCompleted,
    PaymentFailed,
)
from acme_orders.core.topology import QUEUES
from acme_orders.services import WORKERS
from tests.repo.test_readme import section, table_rows


@pytest.mark.parametrize(
    ("binding", "routing_key", "routed"),
    [
        ("order.placed", "order.placed", True),
        ("order.placed", "order.placed.again", False),
        ("order.placed", "order", False),
        ("payment.*", "payment.completed", True),
        ("payment.*", "payment.failed", True),
        ("payment.*", "payment", False),
        ("payment.*", "payment.failed.twice", False),
        ("*.placed", "order.placed", True),
        ("*.placed", "placed", False),
        ("#", "order.placed", True),
        ("#", "anything.at.all.here", True),
        ("order.#", "order", True),
        ("order.#", "order.placed.again", True),
        ("order.#", "orders.placed", False),
        ("#.failed", "payment.failed", True),
        ("#.failed", "failed", True),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b.c", False),
        ("a.*.z", "a.z", False),
        ("#.#", "a.b", True),
    ],
)
def test_topic_matches_as_a_topic_exchange_routes(
    binding: str, routing_key: str, routed: bool
) -> None:
    assert topology.topic_matches(binding, routing_key) is routed


@pytest.mark.parametrize(
    ("event_type", "publisher", "consumers"),
    [
        (OrderPlaced, "api", ["inventory"]),
        (InventoryReserved, "inventory", ["payment"]),
        (OrderOutOfStock, "inventory", ["notification"]),
        (InventoryReleased, "inventory", []),
        (PaymentCompleted, "payment", ["notification"]),
        (PaymentFailed, "payment", ["inventory", "notification"]),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else None,
)
def test_each_event_has_its_publisher_and_the_consumers_its_queues_are_bound_for(
    event_type: type[Event], publisher: str, consumers: list[str]
) -> None:
    assert topology.PUBLISHED_BY[event_type] == publisher
    assert topology.publisher_of(event_type.__name__) == publisher
    assert topology.consumers_of(event_type.routing_key) == consumers


def test_every_event_type_has_a_publisher_and_nothing_else_does() -> None:
    assert set(topology.PUBLISHED_BY) == set(EVENT_TYPES)
    assert topology.publisher_of("SomethingElseHappened") is None


def test_the_catalogue_knows_the_queues_of_every_consumer_the_cli_runs() -> None:
    consumers = [service for service in WORKERS if service != "publisher"]

    assert list(topology.CONSUMER_SERVICES) == consumers
    assert [spec.name for spec in QUEUES] == [
        "inventory.order.placed",
        "inventory.payment.failed",
        "inventory.order.cancelled",
        "payment.inventory.reserved",
        "notification.order.outcome",
    ]


def test_a_subscription_names_the_queue_the_event_arrives_on() -> None:
    [subscription] = topology.subscriptions_of(PaymentCompleted.routing_key)

    assert subscription.service == "notification"
    assert subscription.queue.name == "notification.order.outcome"
    assert topology.events_of_queue(subscription.queue) == [
        OrderOutOfStock,
        PaymentCompleted,
        PaymentFailed,
        OrderCancelled,
    ]


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda cls: cls.__name__)
def test_the_readme_catalogue_names_the_same_publisher_and_consumers(
    event_type: type[Event],
) -> None:
    rows = {row[1].strip("`"): row for row in table_rows(section("Event catalogue"))}
    row = rows[event_type.__name__]

    assert row[2] == topology.PUBLISHED_BY[event_type]
    consumers = topology.consumers_of(event_type.routing_key)
    assert row[3] == (", ".join(consumers) if consumers else "(none yet)")
