"""Access control and abuse limits of the Order API, in-process over ASGI, against the real
database: API keys and their scopes, owners of orders, the rate limit on placing orders."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from uuid import uuid4

import asyncpg
import httpx
import pytest
from fastapi import APIRouter
from starlette.routing import BaseRoute, Route

from acme_orders.core.settings import Settings
from acme_orders.ops.api_keys import Scope, create_key, revoke_key
from acme_orders.order_api.app import create_app
from tests.support.api import api_client, app_client, key_headers
from tests.support.products import NewProduct
from tests.support.waiting import wait_until


@asynccontextmanager
async def running_api(settings: Settings, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    """The API with auth on (whatever the environment says) and no rate limits, unless told."""
    update: dict[str, object] = {
        "auth_disabled": False,
        "rate_limit_orders_per_second": 0,
        "rate_limit_reads_per_second": 0,
    }
    async with api_client(settings.model_copy(update=update | overrides)) as client:
        yield client


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_api(settings) as client:
        yield client


NewKey = Callable[[Scope], Awaitable[dict[str, str]]]


@pytest.fixture
def new_key(pool: asyncpg.Pool) -> NewKey:
    """A key of the test's own; returns the headers that send it."""

    async def make(scope: Scope) -> dict[str, str]:
        return await key_headers(pool, scope)

    return make


def order_body(sku: str, customer: str = "C100") -> dict[str, object]:
    return {"customer_id": customer, "email": "c100@example.com", "items": [{"sku": sku, "qty": 1}]}


async def test_a_request_without_a_key_is_401_with_a_bearer_challenge(
    api: httpx.AsyncClient, new_product: NewProduct
) -> None:
    sku = await new_product(stock=5)
    responses = [
        await api.post("/orders", json=order_body(sku)),
        await api.get(f"/orders/{uuid4()}"),
        await api.get("/orders"),
        await api.get("/products"),
    ]

    for response in responses:
        assert response.status_code == 401, response.request.url
        assert response.headers["www-authenticate"] == "Bearer"
        assert "API key is required" in response.json()["detail"]


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer acme_" + "x" * 43,
        "Bearer not-even-our-format",
        "Bearer " + "acme_" * 300,
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "acme_something",
    ],
    ids=["unknown key", "foreign token", "huge token", "basic auth", "no token", "no scheme"],
)
async def test_a_wrong_key_is_401(
    api: httpx.AsyncClient, new_product: NewProduct, pool: asyncpg.Pool, authorization: str
) -> None:
    sku = await new_product(stock=5)
    orders_before = await pool.fetchval("SELECT count(*) FROM orders")

    response = await api.post(
        "/orders", json=order_body(sku), headers={"Authorization": authorization}
    )

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert await pool.fetchval("SELECT count(*) FROM orders") == orders_before


async def test_an_orders_write_key_places_orders_and_reads_them_and_the_catalogue(
    api: httpx.AsyncClient, new_product: NewProduct, new_key: NewKey
) -> None:
    sku = await new_product(stock=5)
    key = await new_key(Scope.ORDERS_WRITE)

    placed = await api.post("/orders", json=order_body(sku), headers=key)
    read = await api.get(f"/orders/{placed.json()['id']}", headers=key)
    listed = await api.get("/orders", headers=key)
    catalogue = await api.get("/products", headers=key)

    assert placed.status_code == 201, placed.text
    assert read.status_code == 200
    assert read.json() == placed.json()
    assert [order["id"] for order in listed.json()["items"]] == [placed.json()["id"]]
    assert catalogue.status_code == 200
    assert sku in {product["sku"] for product in catalogue.json()}


async def test_a_key_never_reads_another_clients_orders_and_cannot_tell_they_exist(
    api: httpx.AsyncClient, new_product: NewProduct, new_key: NewKey
) -> None:
    sku = await new_product(stock=5)
    alice, bob = await new_key(Scope.ORDERS_WRITE), await new_key(Scope.ORDERS_WRITE)
    customer = f"C-{uuid4().hex[:8]}"
    alices = (await api.post("/orders", json=order_body(sku, customer), headers=alice)).json()

    as_bob = await api.get(f"/orders/{alices['id']}", headers=bob)
    never_existed = await api.get(f"/orders/{uuid4()}", headers=bob)
    bobs_list = await api.get("/orders", params={"customer_id": customer}, headers=bob)

    # The same answer as for an order that does not exist: ids cannot be probed.
    assert as_bob.status_code == never_existed.status_code == 404
    assert as_bob.json()["detail"] == f"order {alices['id']} not found"
    assert bobs_list.status_code == 200
    assert bobs_list.json()["items"] == []


async def test_an_admin_key_reads_every_order_but_does_not_place_any(
    api: httpx.AsyncClient, new_product: NewProduct, new_key: NewKey, pool: asyncpg.Pool
) -> None:
    sku = await new_product(stock=5)
    writer, admin = await new_key(Scope.ORDERS_WRITE), await new_key(Scope.ADMIN)
    customer = f"C-{uuid4().hex[:8]}"
    placed = (await api.post("/orders", json=order_body(sku, customer), headers=writer)).json()
    orders_before = await pool.fetchval("SELECT count(*) FROM orders")

    read = await api.get(f"/orders/{placed['id']}", headers=admin)
    listed = await api.get("/orders", params={"customer_id": customer}, headers=admin)
    refused = await api.post("/orders", json=order_body(sku, customer), headers=admin)

    assert read.status_code == 200
    assert [order["id"] for order in listed.json()["items"]] == [placed["id"]]
    assert refused.status_code == 403
    assert "scope 'admin'" in refused.json()["detail"]
    assert await pool.fetchval("SELECT count(*) FROM orders") == orders_before


async def test_metrics_need_a_metrics_or_an_admin_key(
    api: httpx.AsyncClient, new_key: NewKey
) -> None:
    writer, admin = await new_key(Scope.ORDERS_WRITE), await new_key(Scope.ADMIN)
    scraper = await new_key(Scope.METRICS)

    anonymous = await api.get("/metrics")
    as_writer = await api.get("/metrics", headers=writer)
    as_admin = await api.get("/metrics", headers=admin)
    as_scraper = await api.get("/metrics", headers=scraper)

    assert anonymous.status_code == 401
    # The figures say how busy the whole shop is: not for a client's key.
    assert as_writer.status_code == 403
    assert "this needs 'metrics' or 'admin'" in as_writer.json()["detail"]
    assert as_admin.status_code == as_scraper.status_code == 200
    assert as_scraper.headers["content-type"].startswith("text/plain")
    # The refused requests were timed too.
    assert 'acme_http_request_seconds_count{method="GET",route="/metrics",status="401"}' in (
        as_scraper.text
    )


def every_route(routes: Iterable[BaseRoute]) -> list[tuple[str, str]]:
    """(method, path) of every route, as its router declares it, in included routers too."""
    found = []
    for route in routes:
        if isinstance(route, Route):
            found += [
                (method, route.path) for method in sorted(route.methods or ()) if method != "HEAD"
            ]
        # FastAPI (0.165) keeps an included router as one route holding it; its routes carry the
        # router's prefix already (app.py includes them with none of its own).
        included: APIRouter | None = getattr(route, "original_router", None)
        if included is not None:
            found += every_route(included.routes)
    return found


async def test_a_metrics_key_reads_the_metrics_and_nothing_else(
    settings: Settings, new_product: NewProduct, new_key: NewKey, pool: asyncpg.Pool
) -> None:
    sku = await new_product(stock=5)
    scraper = await new_key(Scope.METRICS)
    app = create_app(settings.model_copy(update={"auth_disabled": False}))
    routes = every_route(app.routes)
    orders_before = await pool.fetchval("SELECT count(*) FROM orders")

    async with app_client(app) as api:
        # (method, path) -> (the status without a key, with the metrics key)
        answers: dict[tuple[str, str], tuple[int, int]] = {}
        for method, path in routes:
            # Any path parameter: an order id, of no order.
            url = re.sub(r"\{[^}]+\}", str(uuid4()), path)
            body = order_body(sku) if method == "POST" else None
            without_key = await api.request(method, url, json=body)
            with_key = await api.request(method, url, json=body, headers=scraper)
            answers[method, path] = (without_key.status_code, with_key.status_code)

    # Derived from the app's routes, so a new route is covered too: where a key is needed, a
    # metrics key is refused (403, not 401: it is a key, of the wrong scope) everywhere but on
    # /metrics; where none is, it gets what anybody gets.
    needing_a_key = {route for route, (anonymous, _) in answers.items() if anonymous == 401}
    assert needing_a_key >= {
        ("GET", "/metrics"),
        ("POST", "/orders"),
        ("GET", "/orders"),
        ("GET", "/orders/{order_id}"),
        ("GET", "/orders/{order_id}/events"),
        ("GET", "/products"),
        ("GET", "/board/stream"),
        ("GET", "/board/dead-letters"),
        ("POST", "/board/dead-letters/{queue}/replay"),
    }
    for route, (anonymous, as_scraper) in answers.items():
        if route == ("GET", "/metrics"):
            assert as_scraper == 200
        elif anonymous == 401:
            assert as_scraper == 403, route
        else:
            assert as_scraper == anonymous, route
    assert await pool.fetchval("SELECT count(*) FROM orders") == orders_before


async def test_an_order_belongs_to_the_key_that_placed_it(
    api: httpx.AsyncClient, new_product: NewProduct, new_key: NewKey, pool: asyncpg.Pool
) -> None:
    sku = await new_product(stock=5)
    key = await new_key(Scope.ORDERS_WRITE)

    placed = (await api.post("/orders", json=order_body(sku), headers=key)).json()

    owner = await pool.fetchval(
        """
        SELECT k.name FROM orders o JOIN api_keys k ON k.id = o.api_key_id
        WHERE o.id = $1::uuid
        """,
        placed["id"],
    )
    token = key["Authorization"].removeprefix("Bearer ")
    stored = await pool.fetchrow("SELECT key_hash FROM api_keys WHERE name = $1", owner)
    assert stored is not None
    # Only a hash is stored, never the key.
    assert stored["key_hash"] != token
    assert token not in stored["key_hash"]


async def test_an_idempotency_key_of_one_client_does_not_reach_another_clients_order(
    api: httpx.AsyncClient, new_product: NewProduct, new_key: NewKey
) -> None:
    sku = await new_product(stock=5)
    alice, bob = await new_key(Scope.ORDERS_WRITE), await new_key(Scope.ORDERS_WRITE)
    same_key = {"Idempotency-Key": str(uuid4())}

    alices = await api.post("/orders", json=order_body(sku), headers=alice | same_key)
    bobs = await api.post("/orders", json=order_body(sku), headers=bob | same_key)
    alices_retry = await api.post("/orders", json=order_body(sku), headers=alice | same_key)

    assert alices.status_code == bobs.status_code == alices_retry.status_code == 201
    assert bobs.json()["id"] != alices.json()["id"]
    assert "idempotent-replayed" not in bobs.headers
    assert alices_retry.json()["id"] == alices.json()["id"]


async def test_a_revoked_key_stops_working_within_the_cache_ttl(
    settings: Settings, new_product: NewProduct, pool: asyncpg.Pool
) -> None:
    sku = await new_product(stock=50)
    name = f"test-{secrets.token_hex(6)}"
    token = await create_key(pool, name, Scope.ORDERS_WRITE)
    key = {"Authorization": f"Bearer {token}"}
    async with running_api(settings, api_key_cache_ttl=0.5) as api:
        assert (await api.post("/orders", json=order_body(sku), headers=key)).status_code == 201

        await revoke_key(pool, name)

        async def refused() -> bool:
            response = await api.get("/products", headers=key)
            return response.status_code == 401

        await wait_until(refused, deadline=5, what="the revoked key to be refused")


async def test_a_new_key_works_within_the_cache_ttl(settings: Settings, pool: asyncpg.Pool) -> None:
    async with running_api(settings, api_key_cache_ttl=0.5) as api:
        # The API has read its keys once already, before this one existed.
        assert (await api.get("/products")).status_code == 401
        token = await create_key(pool, f"test-{secrets.token_hex(6)}", Scope.ADMIN)

        async def accepted() -> bool:
            response = await api.get("/products", headers={"Authorization": f"Bearer {token}"})
            return response.status_code == 200

        await wait_until(accepted, deadline=5, what="the new key to be accepted")


async def test_placing_orders_over_the_rate_is_429_with_retry_after_per_key(
    settings: Settings, new_product: NewProduct, new_key: NewKey, pool: asyncpg.Pool
) -> None:
    sku = await new_product(stock=50)
    greedy, other = await new_key(Scope.ORDERS_WRITE), await new_key(Scope.ORDERS_WRITE)
    limits = {"rate_limit_orders_per_second": 0.01, "rate_limit_burst": 3}
    async with running_api(settings, **limits) as api:
        allowed = [await api.post("/orders", json=order_body(sku), headers=greedy) for _ in "abc"]
        orders_before = await pool.fetchval("SELECT count(*) FROM orders")

        refused = await api.post("/orders", json=order_body(sku), headers=greedy)
        others = await api.post("/orders", json=order_body(sku), headers=other)
        reading = await api.get("/orders", headers=greedy)

    assert [r.status_code for r in allowed] == [201, 201, 201]
    assert refused.status_code == 429
    # One token every 100 s, and none left.
    assert 1 <= int(refused.headers["retry-after"]) <= 100
    assert await pool.fetchval("SELECT count(*) FROM orders") == orders_before + 1
    assert others.status_code == 201, "each key has a bucket of its own"
    assert reading.status_code == 200, "reads are counted apart from orders"


async def test_with_auth_disabled_the_rate_limit_counts_by_client_address(
    settings: Settings, new_product: NewProduct
) -> None:
    sku = await new_product(stock=50)
    limits = {"auth_disabled": True, "rate_limit_orders_per_second": 0.01, "rate_limit_burst": 1}
    async with running_api(settings, **limits) as api:
        first = await api.post("/orders", json=order_body(sku))
        second = await api.post("/orders", json=order_body(sku))

    assert first.status_code == 201
    assert second.status_code == 429
    assert "retry-after" in second.headers


async def test_reading_over_the_rate_is_429_with_retry_after_per_key_apart_from_orders(
    settings: Settings, new_product: NewProduct, new_key: NewKey
) -> None:
    sku = await new_product(stock=50)
    greedy, other = await new_key(Scope.ORDERS_WRITE), await new_key(Scope.ORDERS_WRITE)
    limits = {"rate_limit_reads_per_second": 0.01, "rate_limit_reads_burst": 4}
    async with running_api(settings, **limits) as api:
        placed = (await api.post("/orders", json=order_body(sku), headers=greedy)).json()
        # Every read counts: the list, one order, its events, the catalogue.
        allowed = [
            await api.get("/orders", headers=greedy),
            await api.get(f"/orders/{placed['id']}", headers=greedy),
            await api.get(f"/orders/{placed['id']}/events", headers=greedy),
            await api.get("/products", headers=greedy),
        ]

        refused = [
            await api.get("/orders", headers=greedy),
            await api.get(f"/orders/{placed['id']}", headers=greedy),
            await api.get("/products", headers=greedy),
        ]
        others = await api.get("/orders", headers=other)
        placing = await api.post("/orders", json=order_body(sku), headers=greedy)

    assert [r.status_code for r in allowed] == [200, 200, 200, 200]
    assert [r.status_code for r in refused] == [429, 429, 429]
    # One token every 100 s, and none left.
    assert all(1 <= int(r.headers["retry-after"]) <= 100 for r in refused)
    assert "too many reads from this API key" in refused[0].json()["detail"]
    assert others.status_code == 200, "each key has a bucket of its own"
    assert placing.status_code == 201, "orders are counted apart from reads"


async def test_with_auth_disabled_the_read_limit_counts_by_client_address(
    settings: Settings,
) -> None:
    limits = {
        "auth_disabled": True,
        "rate_limit_reads_per_second": 0.01,
        "rate_limit_reads_burst": 1,
    }
    async with running_api(settings, **limits) as api:
        first = await api.get("/orders")
        second = await api.get("/orders")

    assert first.status_code == 200
    assert second.status_code == 429
    assert "too many reads from this client address" in second.json()["detail"]


async def test_health_documentation_and_schema_stay_open_and_show_the_scheme(
    api: httpx.AsyncClient,
) -> None:
    health = await api.get("/health")
    docs = await api.get("/docs")
    schema = await api.get("/openapi.json")

    assert health.status_code == docs.status_code == schema.status_code == 200
    document = schema.json()
    assert document["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key made with `acme-orders apikey create NAME --scope SCOPE`.",
    }
    secured = {
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    }
    assert secured == {
        "POST /orders",
        "GET /orders",
        "GET /orders/{order_id}",
        "GET /orders/{order_id}/events",
        "POST /orders/{order_id}/cancel",
        "GET /products",
        "GET /metrics",
    }
