"""Security end to end, with the real service processes: no e-mail address in any log, the warning
of an open API, an API with keys required in front of the real pipeline, and hostile events parked
before they reach the database."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractChannel

from acme_orders.core.topology import INVENTORY_ORDER_PLACED
from acme_orders.ops.privacy import mask_email
from tests.support.processes import OUTPUT_DIR, acme_orders, free_port
from tests.support.products import add_product
from tests.support.system import System, start_service
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

# Anything that looks like a whole address: a masked one has "***" before the @.
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def service_logs() -> dict[str, str]:
    """Every service log of this run, this test's and the others'."""
    return {path.name: path.read_text(errors="replace") for path in OUTPUT_DIR.glob("*.log")}


async def test_no_service_log_carries_a_full_email_address(system: System) -> None:
    email = f"pii-{secrets.token_hex(4)}@example.com"
    paid_sku = await add_product(system.pool, stock=1)
    short_sku = await add_product(system.pool, stock=0)
    paid = await system.place_order([(paid_sku, 1)], customer="C-PII", email=email)
    # A client that uses its customers' addresses as their ids: logged masked too.
    short = await system.place_order([(short_sku, 1)], customer=f"crm:{email}", email=email)
    for order in (paid, short):
        await system.wait_for_final_status(order["id"])
        await system.wait_until_settled(order["id"])

    logs = service_logs()
    system_logs = {process.log_path.name: process.log() for process in system.processes.values()}

    # The notifications were logged, masked...
    assert mask_email(email) in system_logs["notification.log"]
    # ...and no service log of the run holds this address whole...
    for name, text in logs.items():
        assert email not in text, name
    # ...nor does any log of the system's services hold any address whole. (Other tests' logs may
    # hold generated text that looks like one, such as Schemathesis's customer ids.)
    for name, text in system_logs.items():
        whole = [found for found in EMAIL.findall(text) if "***@" not in found]
        assert not whole, f"{name} logs e-mail addresses: {sorted(set(whole))[:5]}"


async def test_the_api_warns_at_start_up_when_auth_is_disabled(system: System) -> None:
    log = system.processes["api"].log()

    warning = next(line for line in log.splitlines() if "AUTH_DISABLED is set" in line)
    # The level, whether the line is JSON ("level":"WARNING", as in a log file) or text.
    assert "WARNING" in warning
    assert "acme-orders apikey create" in warning


async def test_the_api_refuses_to_start_open_on_an_address_others_can_reach(
    system: System,
) -> None:
    environ = system.environ | {
        "API_HOST": "0.0.0.0",  # noqa: S104 (refused before it listens)
        "API_PORT": str(free_port()),
        "AUTH_DISABLED": "1",
    }
    refused = await acme_orders(environ, "run", "api")

    assert refused.returncode == 1
    assert "refusing to start" in refused.stderr
    assert "AUTH_DISABLED_ALLOW_REMOTE=1" in refused.stderr


@pytest.fixture
async def locked_api(system: System) -> AsyncIterator[httpx.AsyncClient]:
    """A second API process in front of the same pipeline, with keys required, as in
    production; its key cache is short so the test need not wait long for a new key."""
    port = free_port()
    environ = system.environ | {
        "API_PORT": str(port),
        "AUTH_DISABLED": "0",
        "API_KEY_CACHE_TTL": "0.5",
    }
    process = await start_service("api", environ, "api-locked")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        await process.stop()
    assert "AUTH_DISABLED" not in process.log()


async def test_with_keys_required_an_order_goes_through_only_with_a_key_from_the_cli(
    system: System, locked_api: httpx.AsyncClient
) -> None:
    sku = await add_product(system.pool, stock=1)
    body = {"customer_id": "C-KEY", "email": "key@example.com", "items": [{"sku": sku, "qty": 1}]}
    created = await acme_orders(
        system.environ, "apikey", "create", f"e2e-{secrets.token_hex(4)}", "--scope", "orders:write"
    )
    assert created.returncode == 0, created.stderr
    key = {"Authorization": f"Bearer {created.stdout.strip()}"}

    without = await locked_api.post("/orders", json=body)

    async def placed() -> httpx.Response | None:
        response = await locked_api.post("/orders", json=body, headers=key)
        return response if response.status_code == 201 else None

    order = (await wait_until(placed, deadline=10, what="the new key to be accepted")).json()

    async def paid() -> bool:
        response = await locked_api.get(f"/orders/{order['id']}", headers=key)
        return bool(response.json()["status"] == "paid")

    assert without.status_code == 401
    await wait_until(paid, what=f"order {order['id']} to be paid")


@pytest.fixture
async def channel(system: System) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(system.env.rabbitmq_url)
    async with connection:
        yield await connection.channel(publisher_confirms=True)


async def test_an_event_out_of_bounds_is_parked_before_it_touches_the_database(
    system: System, channel: AbstractChannel
) -> None:
    """A well-formed OrderPlaced whose fields exceed every bound, for an order that exists: it
    must go to the dead-letter queue, not reserve anything."""
    sku = await add_product(system.pool, stock=10**6)
    order = await system.place_order([(sku, 1)])
    await system.wait_for_final_status(order["id"])
    stock_before = await system.pool.fetchval("SELECT stock_qty FROM products WHERE sku = $1", sku)
    message_id = str(uuid4())
    hostile = {
        "event_id": message_id,
        "event_type": "OrderPlaced",
        "occurred_at": "2025-01-01T00:00:00Z",
        "order_id": order["id"],
        "version": 1,
        "customer_id": "C" * 100_000,
        "email": "x@example.com",
        "items": [{"sku": sku, "qty": 10**6, "unit_price": "0.00"}],
        "total": "0.00",
    }
    await channel.default_exchange.publish(
        aio_pika.Message(json.dumps(hostile).encode(), message_id=message_id),
        routing_key=INVENTORY_ORDER_PLACED.name,
    )
    dlq = await channel.get_queue(INVENTORY_ORDER_PLACED.dead_letter_queue)

    async def parked() -> aio_pika.abc.AbstractIncomingMessage | None:
        while (message := await dlq.get(no_ack=True, fail=False)) is not None:
            if message.message_id == message_id:
                return message
        return None

    message = await wait_until(parked, what="the hostile event in the dead-letter queue")
    reason = str((message.headers or {})["x-dead-letter-reason"])
    assert reason.startswith("invalid OrderPlaced")
    assert "customer_id" in reason
    assert "qty" in reason
    assert (
        await system.pool.fetchval("SELECT stock_qty FROM products WHERE sku = $1", sku)
        == stock_before
    )
    assert not await system.pool.fetchval(
        "SELECT count(*) FROM processed_events WHERE event_id = $1", UUID(message_id)
    )
