"""`docker compose up -d` as users run it: from a clean clone, with the README's own commands (the
seed's curls, `docker logs eda-*`, `docker exec -it eda-postgres psql ...`), on ports published on
127.0.0.1 only, each service with a user of its own. Then what a user counts on: restarting
services under load loses and doubles nothing, `down` and `up -d` keep every order, `down -v`
leaves nothing behind.

The tests share one stack and run in this file's order."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from acme_orders.core.orders import FINAL_STATUSES
from tests.support.compose_stack import ComposeStack, leftovers

pytestmark = pytest.mark.compose

README = Path(__file__).resolve().parents[2] / "README.md"
# The README's commands name the default host port; the stack publishes the API on a free one.
README_API = "http://localhost:8000"


def readme_commands(prefix: str) -> list[str]:
    """The README's command lines that start with `prefix`, once each, in order."""
    found: list[str] = []
    for line in README.read_text(encoding="utf-8").splitlines():
        command = line.strip()
        if command.startswith(prefix) and command not in found:
            found.append(command)
    return found


def seed_curl(customer: str, stack: ComposeStack) -> str:
    [curl] = [
        c for c in readme_commands("curl -s -X POST http://localhost:8000/orders") if customer in c
    ]
    return curl.replace(README_API, f"http://localhost:{stack.ports['API_PORT']}")


def place_with_the_readme_curl(stack: ComposeStack, customer: str) -> dict[str, Any]:
    order: dict[str, Any] = json.loads(stack.shell(seed_curl(customer, stack)).stdout)
    return order


def wait_for_final(stack: ComposeStack, order_id: str, deadline: float = 30.0) -> str:
    give_up = time.monotonic() + deadline
    while True:
        status = httpx.get(f"{stack.api_url}/orders/{order_id}", timeout=10).json()["status"]
        if status in FINAL_STATUSES:
            return str(status)
        if time.monotonic() > give_up:
            raise AssertionError(f"order {order_id} still {status} after {deadline}s")
        time.sleep(0.2)


def wait_for_log(stack: ComposeStack, container: str, text: str, deadline: float = 30.0) -> str:
    give_up = time.monotonic() + deadline
    while True:
        matching = [line for line in stack.logs(container).splitlines() if text in line]
        if matching:
            return matching[-1]
        if time.monotonic() > give_up:
            raise AssertionError(f"{text!r} not in docker logs {container} after {deadline}s")
        time.sleep(0.5)


def test_up_starts_every_container_healthy_with_ports_on_loopback_only(
    stack: ComposeStack,
) -> None:
    containers = stack.containers()
    published = {
        (name, binding["HostIp"], binding["HostPort"])
        for name, container in containers.items()
        for bindings in (container["NetworkSettings"]["Ports"] or {}).values()
        for binding in bindings or []
    }

    assert stack.shell("docker compose ps").returncode == 0
    assert {name for name, _, _ in published} == {"postgres", "rabbitmq", "orderapi"}
    assert {host for _, host, _ in published} == {"127.0.0.1"}
    assert {int(port) for _, _, port in published} == set(stack.ports.values())
    # The open quick-start API says what it is: open, on purpose, behind the published port.
    assert "AUTH_DISABLED_ALLOW_REMOTE allows" in stack.logs("eda-orderapi")


def test_the_happy_path_curl_ends_paid_as_the_logs_say(stack: ComposeStack) -> None:
    order = place_with_the_readme_curl(stack, "C100")

    assert order["status"] == "pending"
    assert wait_for_final(stack, order["id"]) == "paid"
    assert "RESERVED" in wait_for_log(stack, "eda-inventory", f"order {order['id']}")
    assert "COMPLETED" in wait_for_log(stack, "eda-payment", f"order {order['id']}")
    assert "Order Paid" in wait_for_log(stack, "eda-notification", f"order {order['id']}")
    assert "ready:" in stack.logs("eda-orderpublisher")


def test_the_out_of_stock_curl_ends_out_of_stock_as_the_logs_say(stack: ComposeStack) -> None:
    order = place_with_the_readme_curl(stack, "C200")

    assert wait_for_final(stack, order["id"]) == "out_of_stock"
    assert "OUT_OF_STOCK" in wait_for_log(stack, "eda-inventory", f"order {order['id']}")
    assert "Out of Stock" in wait_for_log(stack, "eda-notification", f"order {order['id']}")


def test_the_readme_psql_checks_answer_in_a_terminal_and_without_one(stack: ComposeStack) -> None:
    # The seed's three queries (the README's other psql lines change things).
    commands = readme_commands('docker exec -it eda-postgres psql -U acme -d acme -c "select ')
    assert len(commands) == 3, commands

    for command in commands:
        in_terminal = stack.in_terminal(command)
        # The form for scripts and CI, which have no terminal: without -it.
        scripted = stack.shell(command.replace("docker exec -it ", "docker exec ")).stdout
        for output in (in_terminal, scripted):
            assert re.search(r"\(\d+ rows?\)", output), (command, output)
    orders, stock, outbox = (stack.shell(c.replace(" -it ", " ")).stdout for c in commands)
    assert "paid" in orders
    assert "out_of_stock" in orders
    assert re.search(r"TSHIRT-BLK-M\s*\|\s*\d+", stock)
    assert "SENT" in outbox
    assert "OrderPlaced" in outbox


def test_the_management_ui_answers_with_the_documented_user_and_nobody_else(
    stack: ComposeStack,
) -> None:
    ui = f"http://127.0.0.1:{stack.ports['RABBITMQ_UI_PORT']}"

    page = httpx.get(f"{ui}/", timeout=10)
    me = httpx.get(f"{ui}/api/whoami", auth=("eda_user", "eda_pass"), timeout=10)
    guest = httpx.get(f"{ui}/api/whoami", auth=("guest", "guest"), timeout=10)

    assert page.status_code == 200
    assert "RabbitMQ" in page.text
    assert me.status_code == 200
    assert "administrator" in me.json()["tags"]
    assert guest.status_code == 401


def test_each_service_connects_as_its_own_least_privileged_user(stack: ComposeStack) -> None:
    broker_users = set(
        stack.shell("docker exec eda-rabbitmq rabbitmqctl -q list_connections user").stdout.split()
    )
    database_users = set(
        stack.psql(
            "SELECT DISTINCT usename FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).split()
    )
    app_role = stack.psql(
        "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = 'acme_app'"
    )
    as_app = "docker exec eda-postgres psql -U acme_app -d acme -X -v ON_ERROR_STOP=1 -c "
    create = stack.shell(as_app + '"CREATE TABLE intruder (id int)"', check=False)
    alter = stack.shell(as_app + '"ALTER TABLE orders ADD COLUMN intruder int"', check=False)
    read = stack.shell(as_app + '"SELECT count(*) FROM orders"', check=False)

    assert broker_users >= {"acme-publisher", "acme-inventory", "acme-payment", "acme-notification"}
    assert "eda_user" not in broker_users
    assert database_users == {"acme_app"}
    assert app_role == "f|f|f"
    assert create.returncode != 0
    assert "permission denied for schema public" in create.stderr
    assert alter.returncode != 0
    assert "must be owner" in alter.stderr
    assert read.returncode == 0


def test_the_payment_failure_run_gives_the_stock_back(stack: ComposeStack) -> None:
    stack.shell("docker compose up -d payment", extra_env={"PAYMENT_SUCCESS_RATE": "0"})
    stack.wait_until_up()
    try:
        order = place_with_the_readme_curl(stack, "C100")

        assert wait_for_final(stack, order["id"]) == "payment_failed"
        assert "Payment Failed" in wait_for_log(stack, "eda-notification", f"order {order['id']}")
        assert "RELEASED" in wait_for_log(stack, "eda-inventory", f"order {order['id']}")
    finally:
        stack.shell("docker compose up -d payment")
        stack.wait_until_up()


def add_product(stack: ComposeStack, stock: int) -> str:
    sku = f"COMPOSE-{secrets.token_hex(4).upper()}"
    stack.psql(
        "INSERT INTO products (sku, name, price, stock_qty) "
        f"VALUES ('{sku}', 'compose test', 5.00, {stock})"
    )
    return sku


async def place_orders(api_url: str, sku: str, count: int, rate: float) -> list[str]:
    """`count` orders of one unit of `sku`, `rate` a second; the ids the API accepted."""
    accepted: list[str] = []
    async with httpx.AsyncClient(base_url=api_url, timeout=10) as client:
        for n in range(count):
            response = await client.post(
                "/orders",
                json={
                    "customer_id": f"LOAD{n}",
                    "email": "load@example.com",
                    "items": [{"sku": sku, "qty": 1}],
                },
            )
            assert response.status_code == 201, response.text
            accepted.append(response.json()["id"])
            await asyncio.sleep(1 / rate)
    return accepted


def books_of(stack: ComposeStack, sku: str) -> dict[str, Any]:
    """What the database holds for the orders of one product."""
    rows = stack.psql(
        f"""
        WITH mine AS (SELECT DISTINCT order_id AS id FROM order_items WHERE sku = '{sku}'),
             events AS (SELECT e.* FROM event_outbox e JOIN mine m ON e.order_id = m.id)
        SELECT json_build_object(
            'orders', (SELECT json_object_agg(o.id, o.status) FROM orders o JOIN mine USING (id)),
            'stock', (SELECT stock_qty FROM products WHERE sku = '{sku}'),
            'notifications', (SELECT count(*) FROM notifications JOIN mine ON order_id = mine.id),
            'events', (SELECT json_object_agg(event_type, n) FROM (
                SELECT event_type, count(*) AS n FROM events GROUP BY event_type) AS by_type),
            'unsent', (SELECT count(*) FROM events WHERE status = 'NEW'))
        """
    )
    books: dict[str, Any] = json.loads(rows)
    return books


def test_restarting_inventory_and_payment_under_load_loses_and_doubles_nothing(
    stack: ComposeStack,
) -> None:
    start = 1000
    sku = add_product(stack, stock=start)

    async def load_while_restarting() -> list[str]:
        placing = asyncio.create_task(place_orders(stack.api_url, sku, count=120, rate=10))
        await asyncio.sleep(3)
        await asyncio.to_thread(stack.shell, "docker compose restart inventory payment")
        return await placing

    accepted = asyncio.run(load_while_restarting())
    stack.wait_until_up()

    give_up = time.monotonic() + 90
    while True:
        books = books_of(stack, sku)
        statuses = books["orders"] or {}
        finished = all(status in FINAL_STATUSES for status in statuses.values())
        if finished and books["notifications"] == len(accepted) and books["unsent"] == 0:
            break
        if time.monotonic() > give_up:
            raise AssertionError(f"not settled after 90s: {books}")
        time.sleep(1)

    assert sorted(statuses) == sorted(accepted)
    assert set(statuses.values()) == {"paid"}
    assert books["stock"] == start - len(accepted)
    assert books["notifications"] == len(accepted)
    # Each event once: a redelivery after the restart changed nothing a second time.
    assert books["events"] == {
        "OrderPlaced": len(accepted),
        "InventoryReserved": len(accepted),
        "PaymentCompleted": len(accepted),
    }
    assert (
        stack.shell("docker compose run --rm operator dlq list")
        .stdout.strip()
        .endswith("no dead letters")
    )


def test_down_then_up_keeps_every_order(stack: ComposeStack) -> None:
    before = stack.psql("SELECT id || ' ' || status FROM orders ORDER BY id")

    began = time.monotonic()
    stack.shell("docker compose down")
    stack.shell("docker compose up -d")
    stack.wait_until_up()
    stack.timings["down, then up -d until healthy again"] = time.monotonic() - began

    assert stack.psql("SELECT id || ' ' || status FROM orders ORDER BY id") == before
    assert before.count("\n") >= 120
    # And it still takes orders.
    order = place_with_the_readme_curl(stack, "C100")
    assert wait_for_final(stack, order["id"]) == "paid"


def test_down_v_leaves_no_container_network_or_volume(stack: ComposeStack) -> None:
    stack.shell("docker compose down -v")

    assert leftovers(stack.project) == {"containers": [], "networks": [], "volumes": []}
