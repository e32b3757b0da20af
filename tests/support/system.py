"""The whole system as real processes, started and waited for: a service, or all five against one
database and vhost (`System`, which tests/e2e/conftest.py makes a fixture of)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from acme_orders.core.orders import FINAL_STATUSES
from tests.support.environment import TestEnvironment
from tests.support.processes import ServiceProcess
from tests.support.waiting import wait_until


async def wait_for_api(url: str, process: ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=url) as client:

        async def healthy() -> bool:
            if process.process is not None and process.process.poll() is not None:
                raise AssertionError(f"the API exited:\n{process.log()[-3000:]}")
            try:
                return (await client.get("/health")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(healthy, deadline=30, what="the API to answer /health")


async def wait_ready(process: ServiceProcess) -> None:
    if process.args[-1] == "api":
        await wait_for_api(f"http://127.0.0.1:{process.env['API_PORT']}", process)
    else:
        await process.wait_for_log("ready:", deadline=30)


async def start_service(
    name: str, env: dict[str, str], log_name: str | None = None
) -> ServiceProcess:
    process = ServiceProcess.service(name, env, log_name).start()
    try:
        await wait_ready(process)
    except BaseException:
        process.kill()
        raise
    return process


@dataclass
class System:
    env: TestEnvironment
    environ: dict[str, str]
    client: httpx.AsyncClient
    pool: asyncpg.Pool
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    # Each worker's /metrics and /health port.
    metrics_ports: dict[str, int] = field(default_factory=dict)

    async def place_order(
        self, items: list[tuple[str, int]], customer: str = "C100", email: str = "c100@example.com"
    ) -> dict[str, Any]:
        response = await self.client.post(
            "/orders",
            json={
                "customer_id": customer,
                "email": email,
                "items": [{"sku": sku, "qty": qty} for sku, qty in items],
            },
        )
        assert response.status_code == 201, response.text
        order: dict[str, Any] = response.json()
        return order

    async def wait_for_final_status(self, order_id: str, deadline: float = 15.0) -> dict[str, Any]:
        async def final() -> dict[str, Any] | None:
            order: dict[str, Any] = (await self.client.get(f"/orders/{order_id}")).json()
            return order if order["status"] in FINAL_STATUSES else None

        return await wait_until(final, deadline=deadline, what=f"order {order_id} to finish")

    async def wait_until_settled(self, order_id: str) -> None:
        """Until every event of the order is published and its notification is stored."""

        async def settled() -> bool:
            row = await self.pool.fetchrow(
                """
                SELECT (SELECT count(*) FROM event_outbox WHERE order_id = $1 AND status = 'NEW')
                           AS unsent,
                       (SELECT count(*) FROM notifications WHERE order_id = $1) AS notified
                """,
                order_id,
            )
            return row is not None and row["unsent"] == 0 and row["notified"] >= 1

        await wait_until(settled, what=f"order {order_id} to settle")

    async def replace(self, name: str, **overrides: str) -> None:
        """Stop a service and start it again with some settings changed."""
        assert await self.processes[name].stop() == 0
        self.processes[name] = await start_service(name, self.environ | overrides)

    def logs(self) -> str:
        return "\n".join(p.log() for p in self.processes.values())
