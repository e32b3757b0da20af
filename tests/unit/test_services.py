"""The one registry of services: every service of the topology, each run by a function that
exists, and the API's process importing no consumer."""

from __future__ import annotations

import subprocess
import sys

from acme_orders import services
from acme_orders.core import topology


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
