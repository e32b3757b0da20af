"""The one registry of services: every service of the topology, each run by a function that
exists, and the API's process importing no consumer; and each service's queues bound to exactly
what its routes take."""

from __future__ import annotations

import subprocess
import sys

from acme_orders import services
from acme_orders.core import topology
from acme_orders.core.consumer import Consumer
from acme_orders.core.settings import Settings
from acme_orders.inventory import service as inventory
from acme_orders.notification import service as notification
from acme_orders.payment import service as payment


def test_the_registry_has_every_service_of_the_topology_in_its_order() -> None:
    assert services.SERVICES == topology.SERVICES
    assert tuple(s for s in topology.SERVICES if s != topology.API) == services.WORKERS
    for name in topology.CONSUMER_SERVICES:
        assert services.REGISTRY[name].queues == topology.SUBSCRIPTIONS[name]


def test_each_service_is_run_by_a_function_that_exists() -> None:
    for service in services.REGISTRY.values():
        assert callable(service.load()), service.runs


def test_the_apis_process_loads_no_consumer_and_no_benchmark() -> None:
    # In a process of its own: this one has imported everything already.
    probe = (
        "import sys; import acme_orders.order_api.app, acme_orders.order_api.service; "
        "print('\\n'.join(sorted(sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()

    others = ("publisher", "inventory", "payment", "notification")
    assert not [m for m in loaded if m.split(".")[:2] in (["acme_orders", o] for o in others)]
    assert not [m for m in loaded if m.startswith(("acme_orders_bench", "psutil"))]


def every_consumer() -> dict[str, list[Consumer]]:
    """Each consuming service's Consumers, as its process builds them."""
    settings = Settings(payment_gateway="simulated")
    return {
        topology.INVENTORY: inventory.consumers(),
        topology.PAYMENT: payment.consumers(settings),
        topology.NOTIFICATION: notification.consumers(),
    }


def test_each_queue_is_bound_to_exactly_the_routing_keys_its_routes_take() -> None:
    consumers = every_consumer()
    assert set(consumers) == set(topology.CONSUMER_SERVICES)
    for service, of_service in consumers.items():
        assert tuple(c.queue for c in of_service) == topology.SUBSCRIPTIONS[service]
        for consumer in of_service:
            keys = consumer.queue.routing_keys
            # No wildcard: a type no route names must not arrive unasked.
            assert not [key for key in keys if {"*", "#"} & set(key.split("."))], keys
            assert set(keys) == consumer.binding_keys(), consumer.queue.name
            assert len(keys) == len(set(keys))
            assert not set(consumer.queue.retired_keys) & set(keys)
