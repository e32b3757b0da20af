"""Orders under load, and the invariants every order must meet once the load has settled: what
the fault tests (tests/e2e/test_faults.py) and the failover tests (tests/cluster/) hold the
pipeline to, whatever they did to it meanwhile."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import asyncpg
import httpx

from acme_orders.core.events import EVENT_TYPE_BY_NAME
from acme_orders.core.messaging import connect_once
from acme_orders.core.orders import NOTIFICATION_KIND_FOR_STATUS
from acme_orders.core.settings import Settings
from acme_orders.core.topology import QUEUES, consumers_of
from tests.support.waiting import wait_until

KIND_FOR_STATUS = {status.value: kind for status, kind in NOTIFICATION_KIND_FOR_STATUS.items()}


@dataclass(frozen=True, slots=True)
class CancelAnswer:
    """What POST /orders/{id}/cancel answered at last: 200 (status cancelled) or 409 with the
    status the order had ended with."""

    code: int
    status: str


@dataclass
class Load:
    """Orders offered at a steady rate, each retried with its Idempotency-Key until accepted,
    spread over the API processes of `clients` in turn. With `cancel_every` N, every Nth order is
    also cancelled a random moment (up to `cancel_within` seconds) after it was accepted, the
    cancel retried as the order was until answered 200 or 409. `rejected` holds every answer but
    201, 200, 409 and 503 (a 500 among them): a test expects none."""

    clients: list[httpx.AsyncClient]
    skus: list[str]
    cancel_every: int = 0
    cancel_within: float = 0.05
    accepted: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> order id
    cancels: dict[str, CancelAnswer] = field(default_factory=dict)  # order id -> the answer
    rejected: list[str] = field(default_factory=list)
    unavailable: int = 0  # answers 503
    unreachable: int = 0  # no answer at all

    async def run(self, orders: int, rate: float, until: asyncio.Event | None = None) -> None:
        """Place `orders` orders at `rate` a second, and with `until` go on until it is set too
        (a fault that must happen under load, however long it takes on a slow machine)."""
        shape = random.Random(7)
        tasks: list[asyncio.Task[None]] = []
        n = 0
        while n < orders or (until is not None and not until.is_set()):
            lines = shape.sample(self.skus, shape.randint(1, 3))
            body = {
                "customer_id": f"C{shape.randint(1, 50)}",
                "email": "load@example.com",
                "items": [{"sku": sku, "qty": shape.randint(1, 2)} for sku in lines],
            }
            client = self.clients[len(tasks) % len(self.clients)]
            cancel_after = (
                shape.uniform(0, self.cancel_within)
                if self.cancel_every and n % self.cancel_every == 0
                else None
            )
            tasks.append(asyncio.create_task(self.place(client, str(uuid4()), body, cancel_after)))
            await asyncio.sleep(1 / rate)
            n += 1
        await asyncio.gather(*tasks)

    async def place(
        self,
        client: httpx.AsyncClient,
        key: str,
        body: Mapping[str, object],
        cancel_after: float | None = None,
    ) -> None:
        response = await self._until_answered(
            client, "/orders", {201}, json=body, headers={"Idempotency-Key": key}
        )
        if response is None:
            return
        order_id = response.json()["id"]
        self.accepted[key] = order_id
        if cancel_after is not None:
            await asyncio.sleep(cancel_after)
            cancelled = await self._until_answered(client, f"/orders/{order_id}/cancel", {200, 409})
            if cancelled is not None:
                self.cancels[order_id] = CancelAnswer(
                    cancelled.status_code, cancelled.json()["status"]
                )

    async def _until_answered(
        self, client: httpx.AsyncClient, path: str, answers: set[int], **request: Any
    ) -> httpx.Response | None:
        """POST until one of `answers` comes back (None, and the answer noted in `rejected`, for
        any other but 503; 503 and no answer at all are tried again, for up to 60 s): both
        requests are safe to repeat."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 60
        while loop.time() < give_up:
            try:
                response = await client.post(path, **request)
            except httpx.TransportError:
                self.unreachable += 1  # the API is down or restarting: again, the same request
            else:
                if response.status_code in answers:
                    return response
                if response.status_code != 503:
                    self.rejected.append(f"{path}: {response.status_code} {response.text}")
                    return None
                self.unavailable += 1
            await asyncio.sleep(0.1)
        self.rejected.append(f"{path}: not answered within 60s: {request}")
        return None


async def assert_pipeline_consistent(
    pool: asyncpg.Pool,
    rabbitmq_url: str,
    accepted: set[str],
    start_stock: dict[str, int],
    cancels: Mapping[str, CancelAnswer] | None = None,
) -> None:
    """Every invariant of the pipeline, once every order of the run has settled:

    - every accepted order, and no other, is in the database, and reaches a final status;
    - each product's stock is its starting stock minus what the paid orders hold;
    - stock reserved for an order whose payment failed, or that was cancelled, is given back;
    - every order has exactly one notification, of the kind its status calls for;
    - a cancel answered 200 left its order cancelled and uncharged, one answered 409 left the
      status it named; no cancelled order was charged;
    - each consumer handled each of its events once, and no message was dead-lettered.
    """

    async def all_final() -> bool:
        waiting = await pool.fetchval(
            "SELECT count(*) FROM orders WHERE status IN ('pending', 'reserved')"
        )
        return bool(waiting == 0)

    await wait_until(all_final, deadline=90, what="every order to reach a final status")

    async def settled() -> bool:
        row = await pool.fetchrow(
            """
            SELECT
              (SELECT count(*) FROM orders) = (SELECT count(DISTINCT order_id) FROM notifications)
                AS all_notified,
              NOT EXISTS (
                SELECT 1 FROM stock_reservations r JOIN orders o ON o.id = r.order_id
                WHERE r.status = 'reserved' AND o.status <> 'paid') AS all_released,
              NOT EXISTS (SELECT 1 FROM event_outbox WHERE status = 'NEW') AS all_sent
            """
        )
        return bool(row and row["all_notified"] and row["all_released"] and row["all_sent"])

    await wait_until(settled, deadline=60, what="notifications, releases and the outbox")

    orders = {str(r["id"]): r["status"] for r in await pool.fetch("SELECT id, status FROM orders")}
    assert set(orders) == accepted, "exactly the accepted orders, none twice, none lost"

    paid_qty = {
        r["sku"]: r["qty"]
        for r in await pool.fetch(
            """
            SELECT i.sku, sum(i.qty) AS qty FROM order_items i JOIN orders o ON o.id = i.order_id
            WHERE o.status = 'paid' GROUP BY i.sku
            """
        )
    }
    stock = {
        r["sku"]: r["stock_qty"]
        for r in await pool.fetch(
            "SELECT sku, stock_qty FROM products WHERE sku = ANY($1::text[])", list(start_stock)
        )
    }
    assert stock == {sku: start - paid_qty.get(sku, 0) for sku, start in start_stock.items()}

    notifications = await pool.fetch(
        "SELECT order_id, kind, count(*) OVER (PARTITION BY order_id) AS n FROM notifications"
    )
    assert all(r["n"] == 1 for r in notifications), "one notification per order"
    assert {str(r["order_id"]): r["kind"] for r in notifications} == {
        order_id: KIND_FOR_STATUS[status] for order_id, status in orders.items()
    }

    for order_id, answer in (cancels or {}).items():
        if answer.code == 200:
            assert orders[order_id] == "cancelled", f"{order_id}: cancel answered 200"
        else:
            assert answer.status != "cancelled"
            assert orders[order_id] == answer.status, f"{order_id}: cancel answered 409"
    charged_cancelled = await pool.fetchval(
        "SELECT count(*) FROM payments p JOIN orders o ON o.id = p.order_id "
        "WHERE o.status = 'cancelled'"
    )
    assert charged_cancelled == 0, "a cancelled order was charged"

    emitted = {
        r["event_type"]: r["n"]
        for r in await pool.fetch(
            "SELECT event_type, count(*) AS n FROM event_outbox GROUP BY event_type"
        )
    }
    statuses = list(orders.values())
    released = await pool.fetchval(
        "SELECT count(DISTINCT order_id) FROM stock_reservations WHERE status = 'released'"
    )
    expected_events = {
        "OrderPlaced": len(orders),
        "OrderOutOfStock": statuses.count("out_of_stock"),
        "PaymentCompleted": statuses.count("paid"),
        "PaymentFailed": statuses.count("payment_failed"),
        "OrderCancelled": statuses.count("cancelled"),
        "InventoryReleased": released,
    }
    assert {t: emitted.get(t, 0) for t in expected_events} == expected_events
    handled = {
        (r["service"], r["event_type"]): r["n"]
        for r in await pool.fetch(
            """
            SELECT p.service, e.event_type, count(*) AS n
            FROM processed_events p JOIN event_outbox e ON e.event_id = p.event_id
            GROUP BY p.service, e.event_type
            """
        )
    }
    # Every consumer of each event's routing key handled each event once.
    assert handled == {
        (service, event_type): n
        for event_type, n in emitted.items()
        for service in consumers_of(EVENT_TYPE_BY_NAME[event_type].routing_key)
    }

    connection = await connect_once(Settings(rabbitmq_url=rabbitmq_url), "test")
    async with connection:
        channel = await connection.channel()
        for spec in QUEUES:
            dlq = await channel.declare_queue(spec.dead_letter_queue, passive=True)
            assert dlq.declaration_result.message_count == 0, f"{spec.dead_letter_queue} not empty"
