"""The security commands as an operator runs them (the installed console script, configured by the
environment): `acme-orders apikey create|list|revoke` and `acme-orders forget`."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from decimal import Decimal
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest

from acme_orders.ops.api_keys import Scope, create_key, hash_token
from acme_orders.ops.privacy import FORGOTTEN
from tests.support.api import api_client
from tests.support.environment import TestEnvironment
from tests.support.processes import acme_orders
from tests.support.products import add_product


@pytest.fixture
async def api(fresh_env: TestEnvironment) -> AsyncIterator[httpx.AsyncClient]:
    """The API with keys required, on the test's own database."""
    async with api_client(
        fresh_env.settings(auth_disabled=False, rate_limit_orders_per_second=0)
    ) as client:
        yield client


async def test_apikey_create_prints_the_key_alone_and_the_api_accepts_it(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    created = await acme_orders(
        fresh_env.environ(), "apikey", "create", "storefront", "--scope", "orders:write"
    )

    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    assert len(lines) == 1, "the key, alone on stdout"
    token = lines[0]
    assert re.fullmatch(r"acme_[A-Za-z0-9_-]{43}", token)
    assert "storefront" in created.stderr
    assert "not shown again" in created.stderr
    stored = await fresh_pool.fetchrow(
        "SELECT scope, key_hash FROM api_keys WHERE name = 'storefront'"
    )
    assert stored is not None
    assert (stored["scope"], stored["key_hash"]) == ("orders:write", hash_token(token))
    response = await api.get("/products", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


async def test_a_metrics_key_made_by_the_cli_reads_the_metrics_and_nothing_else(
    fresh_env: TestEnvironment, api: httpx.AsyncClient
) -> None:
    created = await acme_orders(
        fresh_env.environ(), "apikey", "create", "prometheus", "--scope", "metrics"
    )

    assert created.returncode == 0, created.stderr
    scraper = {"Authorization": f"Bearer {created.stdout.strip()}"}
    assert (await api.get("/metrics", headers=scraper)).status_code == 200
    assert (await api.get("/products", headers=scraper)).status_code == 403


async def test_apikey_create_refuses_a_taken_name_a_bad_name_and_an_unknown_scope(
    fresh_env: TestEnvironment,
) -> None:
    first = await acme_orders(fresh_env.environ(), "apikey", "create", "ops", "--scope", "admin")
    again = await acme_orders(fresh_env.environ(), "apikey", "create", "ops", "--scope", "admin")
    bad_name = await acme_orders(
        fresh_env.environ(), "apikey", "create", "has space", "--scope", "admin"
    )
    bad_scope = await acme_orders(fresh_env.environ(), "apikey", "create", "x", "--scope", "root")

    assert first.returncode == 0, first.stderr
    assert again.returncode == 1
    assert again.stdout == ""
    assert "already exists" in again.stderr
    assert bad_name.returncode == 1
    assert "not a valid key name" in bad_name.stderr
    assert bad_scope.returncode == 2  # argparse: not one of the choices
    assert "invalid choice" in bad_scope.stderr


async def test_apikey_list_shows_name_scope_and_dates_but_never_the_key_or_its_hash(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool
) -> None:
    empty = await acme_orders(fresh_env.environ(), "apikey", "list")
    writer = await acme_orders(
        fresh_env.environ(), "apikey", "create", "storefront", "--scope", "orders:write"
    )
    await acme_orders(fresh_env.environ(), "apikey", "create", "dashboard", "--scope", "admin")
    await acme_orders(fresh_env.environ(), "apikey", "revoke", "dashboard")

    listed = await acme_orders(fresh_env.environ(), "apikey", "list")

    assert empty.stdout == "no API keys\n"
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert re.fullmatch(r"storefront\s+orders:write\s+created \S+\s+active", lines[0])
    assert re.fullmatch(r"dashboard\s+admin\s+created \S+\s+revoked \S+", lines[1])
    assert lines[2] == "2 API keys"
    token = writer.stdout.strip()
    hashes = [r["key_hash"] for r in await fresh_pool.fetch("SELECT key_hash FROM api_keys")]
    for secret in [token, *hashes]:
        assert secret not in listed.stdout


async def test_apikey_revoke_stops_the_key_and_says_so_and_an_unknown_name_fails(
    fresh_env: TestEnvironment, api: httpx.AsyncClient
) -> None:
    created = await acme_orders(fresh_env.environ(), "apikey", "create", "old", "--scope", "admin")
    key = {"Authorization": f"Bearer {created.stdout.strip()}"}
    assert (await api.get("/products", headers=key)).status_code == 200

    revoked = await acme_orders(fresh_env.environ(), "apikey", "revoke", "old")
    again = await acme_orders(fresh_env.environ(), "apikey", "revoke", "old")
    unknown = await acme_orders(fresh_env.environ(), "apikey", "revoke", "never-made")

    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith("revoked API key 'old'")
    assert again.returncode == 0
    assert "was already revoked" in again.stdout
    assert unknown.returncode == 1
    assert unknown.stdout == ""
    assert "no API key is named 'never-made'" in unknown.stderr
    # A fresh app has no cached copy of the keys: it reads them now.
    async with api_client(fresh_env.settings(auth_disabled=False)) as fresh:
        assert (await fresh.get("/products", headers=key)).status_code == 401


async def place_with_notification(
    pool: asyncpg.Pool, customer: str, email: str, placed_with: str | None = None
) -> UUID:
    """An order as the pipeline leaves it: its events in the outbox and a notification sent;
    placed with the API key named `placed_with` (None: without a key)."""
    sku = await add_product(pool, stock=5)
    order_id = uuid4()
    await pool.execute(
        """
        INSERT INTO orders (id, customer_id, email, total, api_key_id)
        VALUES ($1, $2, $3, 10, (SELECT id FROM api_keys WHERE name = $4))
        """,
        order_id,
        customer,
        email,
        placed_with,
    )
    await pool.execute(
        "INSERT INTO order_items (order_id, sku, qty, unit_price) VALUES ($1, $2, 1, $3)",
        order_id,
        sku,
        Decimal("10.00"),
    )
    await pool.execute(
        """
        INSERT INTO event_outbox (event_id, event_type, routing_key, order_id, payload, status)
        VALUES ($1, 'OrderPlaced', 'order.placed', $2, $3::jsonb, 'SENT')
        """,
        uuid4(),
        order_id,
        f'{{"email": "{email}", "customer_id": "{customer}", "items": []}}',
    )
    await pool.execute(
        """
        INSERT INTO notifications (order_id, kind, recipient, subject, body)
        VALUES ($1, 'order_paid', $2, 'paid', 'We received your payment.')
        """,
        order_id,
        email,
    )
    await pool.execute("UPDATE orders SET status = 'reserved' WHERE id = $1", order_id)
    await pool.execute("UPDATE orders SET status = 'paid' WHERE id = $1", order_id)
    return order_id


async def test_forget_erases_the_email_everywhere_and_keeps_the_order_history(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool
) -> None:
    forgotten = [
        await place_with_notification(fresh_pool, "C-GONE", "gone@example.com") for _ in "ab"
    ]
    kept = await place_with_notification(fresh_pool, "C-STAYS", "stays@example.com")

    result = await acme_orders(fresh_env.environ(), "forget", "C-GONE")

    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "erased the e-mail address of customer 'C-GONE' from 2 orders, 2 notifications and "
        "2 outbox events; the orders themselves are kept\n"
    )
    rows = [
        row
        for table in ("orders", "notifications", "event_outbox")
        for row in await fresh_pool.fetch(f"SELECT * FROM {table}")
    ]
    everything = "\n".join(str(dict(row)) for row in rows)
    assert "gone@example.com" not in everything
    assert "stays@example.com" in everything
    orders = await fresh_pool.fetch(
        "SELECT id, customer_id, email, status, total FROM orders WHERE id = ANY($1::uuid[])",
        forgotten,
    )
    assert {(r["customer_id"], r["email"], r["status"], r["total"]) for r in orders} == {
        ("C-GONE", FORGOTTEN, "paid", Decimal("10.00"))
    }
    assert (
        await fresh_pool.fetchval(
            "SELECT count(*) FROM order_items WHERE order_id = ANY($1::uuid[])", forgotten
        )
        == 2
    )
    assert await fresh_pool.fetchval("SELECT email FROM orders WHERE id = $1", kept) == (
        "stays@example.com"
    )


async def test_forget_again_changes_nothing_and_an_unknown_customer_is_no_error(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool
) -> None:
    await place_with_notification(fresh_pool, "C-TWICE", "twice@example.com")
    await acme_orders(fresh_env.environ(), "forget", "C-TWICE")

    again = await acme_orders(fresh_env.environ(), "forget", "C-TWICE")
    nobody = await acme_orders(fresh_env.environ(), "forget", "C-NOBODY")

    assert again.returncode == nobody.returncode == 0
    assert "from 0 orders, 0 notifications and 0 outbox events" in again.stdout
    assert "from 0 orders, 0 notifications and 0 outbox events" in nobody.stdout


async def test_forget_warns_about_orders_still_in_progress(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool
) -> None:
    await fresh_pool.execute(
        "INSERT INTO orders (id, customer_id, email, total) VALUES ($1, 'C-BUSY', $2, 1)",
        uuid4(),
        "busy@example.com",
    )

    result = await acme_orders(fresh_env.environ(), "forget", "C-BUSY")

    assert result.returncode == 0, result.stderr
    assert "1 order of this customer still in progress" in result.stderr
    assert "from 1 order," in result.stdout


async def test_forget_for_a_key_erases_only_the_orders_that_key_placed(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool
) -> None:
    for name in ("shop-a", "shop-b"):
        await create_key(fresh_pool, name, Scope.ORDERS_WRITE)
    # One customer id, with orders of both keys: both clients have a customer C-BOTH.
    of_a = await place_with_notification(fresh_pool, "C-BOTH", "both-a@example.com", "shop-a")
    of_b = await place_with_notification(fresh_pool, "C-BOTH", "both-b@example.com", "shop-b")

    result = await acme_orders(fresh_env.environ(), "forget", "C-BOTH", "--key", "shop-a")

    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "erased the e-mail address of customer 'C-BOTH' from 1 order placed with API key "
        "'shop-a', 1 notification and 1 outbox event; the orders themselves are kept\n"
    )
    erased = await rows_of_order(fresh_pool, of_a)
    kept = await rows_of_order(fresh_pool, of_b)
    assert "both-a@example.com" not in erased
    assert FORGOTTEN in erased
    # Key B's order, its notification and its event still hold their address.
    assert kept.count("both-b@example.com") == 3


async def test_forget_for_a_key_refuses_a_customer_of_other_keys_only_and_erases_nothing(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool
) -> None:
    for name in ("shop-a", "shop-b"):
        await create_key(fresh_pool, name, Scope.ORDERS_WRITE)
    of_b = await place_with_notification(fresh_pool, "C-OF-B", "of-b@example.com", "shop-b")

    refused = await acme_orders(fresh_env.environ(), "forget", "C-OF-B", "--key", "shop-a")
    nobody = await acme_orders(fresh_env.environ(), "forget", "C-NOBODY", "--key", "shop-a")
    no_such_key = await acme_orders(fresh_env.environ(), "forget", "C-OF-B", "--key", "shop-z")

    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.strip() == (
        "acme-orders forget: PostgreSQL: API key 'shop-a' placed no order for customer 'C-OF-B': "
        "a key can only have its own customers forgotten; nothing was erased"
    )
    # The same answer for a customer nobody has: the key learns nothing of other clients'.
    assert nobody.returncode == 1
    assert nobody.stderr.replace("C-NOBODY", "C-OF-B") == refused.stderr
    assert no_such_key.returncode == 1
    assert "no API key is named 'shop-z'" in no_such_key.stderr
    assert (await rows_of_order(fresh_pool, of_b)).count("of-b@example.com") == 3


async def rows_of_order(pool: asyncpg.Pool, order_id: UUID) -> str:
    """The order's row, its notifications' and its outbox events', as text to search."""
    rows = [
        row
        for table, column in (
            ("orders", "id"),
            ("notifications", "order_id"),
            ("event_outbox", "order_id"),
        )
        for row in await pool.fetch(f"SELECT * FROM {table} WHERE {column} = $1", order_id)
    ]
    return "\n".join(str(dict(row)) for row in rows)
