"""Every API response carries its request's id, and the order a request places carries it on as
its correlation id. In-process, over ASGI, against the real database."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import httpx
import orjson
import pytest

from acme_orders.core.settings import Settings
from tests.support.api import api_client, one_line_order
from tests.support.products import NewProduct

GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(
        settings.model_copy(
            update={
                "auth_disabled": True,
                "rate_limit_orders_per_second": 0,
                "max_request_bytes": 4096,
            }
        )
    ) as client:
        yield client


async def order_placed(pool: asyncpg.Pool, order_id: str) -> dict[str, object]:
    payload = await pool.fetchval(
        "SELECT payload::text FROM event_outbox WHERE order_id = $1 AND event_type = 'OrderPlaced'",
        UUID(order_id),
    )
    event: dict[str, object] = orjson.loads(payload)
    return event


async def test_the_request_id_comes_back_and_becomes_the_orders_correlation_id(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(stock=5)

    response = await api.post(
        "/orders", json=one_line_order(sku), headers={"X-Request-ID": "abc-123"}
    )

    assert response.status_code == 201, response.text
    assert response.headers["X-Request-ID"] == "abc-123"
    event = await order_placed(pool, response.json()["id"])
    assert (event["correlation_id"], event["causation_id"]) == ("abc-123", None)


async def test_without_a_request_id_the_api_makes_one_and_the_order_carries_it(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(stock=5)

    response = await api.post("/orders", json=one_line_order(sku))

    assert response.status_code == 201, response.text
    request_id = response.headers["X-Request-ID"]
    assert GENERATED.fullmatch(request_id)
    assert (await order_placed(pool, response.json()["id"]))["correlation_id"] == request_id


@pytest.mark.parametrize("insane", ["two words", "x" * 129, "c100@example.com"])
async def test_an_insane_request_id_is_replaced(api: httpx.AsyncClient, insane: str) -> None:
    response = await api.get("/health", headers={"X-Request-ID": insane})

    assert GENERATED.fullmatch(response.headers["X-Request-ID"])


async def test_every_answer_carries_a_request_id_errors_included(api: httpx.AsyncClient) -> None:
    too_large = await api.post("/orders", content=b"x" * 5000, headers={"X-Request-ID": "big-1"})
    unknown = await api.get("/orders/not-a-uuid", headers={"X-Request-ID": "bad-1"})

    assert (too_large.status_code, too_large.headers["X-Request-ID"]) == (413, "big-1")
    assert (unknown.status_code, unknown.headers["X-Request-ID"]) == (422, "bad-1")
    assert len(too_large.headers.get_list("X-Request-ID")) == 1
