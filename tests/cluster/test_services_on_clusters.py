"""The services run on the clustered servers: every process of the pipeline started with a
ClusterEnvironment's environment (the multi-host DSN), and an order placed through it is paid."""

from __future__ import annotations

import httpx
import pytest

from acme_orders.services import SERVICES
from tests.support.api import one_line_order
from tests.support.clusters import ClusterEnvironment
from tests.support.processes import ServiceProcess, free_port, stop_all
from tests.support.system import start_service
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


async def test_an_order_is_paid_with_every_service_on_the_clusters(
    cluster_env: ClusterEnvironment,
) -> None:
    port = free_port()
    environ = cluster_env.environ(API_PORT=str(port), PAYMENT_SUCCESS_RATE="1.0")
    started: list[ServiceProcess] = []
    try:
        for name in SERVICES:
            started.append(await start_service(name, environ, f"cluster-{name}"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            response = await client.post(
                "/orders",
                json=one_line_order(),
            )
            assert response.status_code == 201, response.text
            order_id = response.json()["id"]

            async def paid() -> bool:
                order = (await client.get(f"/orders/{order_id}")).json()
                return bool(order["status"] == "paid")

            await wait_until(paid, deadline=30, what=f"order {order_id} to be paid")
    finally:
        await stop_all(started)
