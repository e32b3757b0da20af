"""The Order API against the real database (in-process, over ASGI)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest

from acme_orders.core.settings import Settings
from acme_orders.order_api import store
from acme_orders.order_api.app import create_app
from tests.support.api import api_client, app_client
from tests.support.products import NewProduct, stock_of

# These tests are about orders, not about keys (test_api_security.py is): they call the API as the
# quick start does, with no key and no rate limit.
OPEN_API = {
    "auth_disabled": True,
    "rate_limit_orders_per_second": 0,
    "rate_limit_reads_per_second": 0,
}


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(
        settings.model_copy(update={"max_request_bytes": 4096, **OPEN_API})
    ) as client:
        yield client


def urlsafe_base64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def order_body(sku: str, qty: int = 1, customer: str = "C100") -> dict[str, object]:
    return {
        "customer_id": customer,
        "email": "c100@example.com",
        "items": [{"sku": sku, "qty": qty}],
    }


async def counts(pool: asyncpg.Pool) -> tuple[int, int, int]:
    row = await pool.fetchrow(
        """
        SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM order_items),
               (SELECT count(*) FROM event_outbox)
        """
    )
    assert row is not None
    return row[0], row[1], row[2]


async def test_place_order_stores_order_items_and_event_together(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(stock=10)
    other = await new_product(stock=10)
    body = {
        "customer_id": "C100",
        "email": "c100@example.com",
        "items": [{"sku": sku, "qty": 2}, {"sku": other, "qty": 1}],
    }

    response = await api.post("/orders", json=body)

    assert response.status_code == 201, response.text
    order = response.json()
    assert response.headers["location"] == f"/orders/{order['id']}"
    assert order["status"] == "pending"
    assert order["total"] == "30.00"
    assert {(i["sku"], i["qty"], i["unit_price"]) for i in order["items"]} == {
        (sku, 2, "10.00"),
        (other, 1, "10.00"),
    }
    event = await pool.fetchrow(
        "SELECT event_type, routing_key, status, payload FROM event_outbox WHERE order_id = $1",
        UUID(order["id"]),
    )
    assert event is not None
    assert (event["event_type"], event["routing_key"], event["status"]) == (
        "OrderPlaced",
        "order.placed",
        "NEW",
    )
    payload = json.loads(event["payload"])
    assert payload["order_id"] == order["id"]
    assert payload["version"] == 1
    # Time-ordered ids (core/ids.py), so that the indexes they key grow at one end.
    assert UUID(order["id"]).version == 7
    assert UUID(payload["event_id"]).version == 7
    assert {(i["sku"], i["qty"]) for i in payload["items"]} == {(sku, 2), (other, 1)}
    # Placing an order reserves nothing yet: that is the inventory's job.
    assert await stock_of(pool, sku) == 10


async def test_get_order_returns_items_total_and_timestamps(
    api: httpx.AsyncClient, new_product: NewProduct
) -> None:
    sku = await new_product(stock=5)
    placed = (await api.post("/orders", json=order_body(sku, 3))).json()

    response = await api.get(f"/orders/{placed['id']}")

    assert response.status_code == 200
    order = response.json()
    assert order == placed
    assert order["items"] == [{"sku": sku, "qty": 3, "unit_price": "10.00", "line_total": "30.00"}]
    assert order["created_at"]
    assert order["updated_at"]


async def test_unknown_order_is_404_and_malformed_id_is_422(api: httpx.AsyncClient) -> None:
    missing = await api.get(f"/orders/{uuid4()}")
    assert missing.status_code == 404
    assert "not found" in missing.json()["detail"]

    malformed = await api.get("/orders/not-a-uuid")
    assert malformed.status_code == 422


async def test_list_orders_filters_by_customer_and_status_and_pages_with_a_cursor(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(stock=50)
    customer = f"C-{uuid4().hex[:8]}"
    ids = [
        (await api.post("/orders", json=order_body(sku, 1, customer))).json()["id"]
        for _ in range(5)
    ]
    await pool.execute("UPDATE orders SET status = 'out_of_stock' WHERE id = $1", UUID(ids[0]))
    # Two orders of the same microsecond: the cursor tells them apart by id, the newest first
    # being the one with the larger id.
    await pool.execute(
        """
        UPDATE orders SET created_at = (SELECT created_at FROM orders WHERE id = $1)
        WHERE id = $2
        """,
        UUID(ids[2]),
        UUID(ids[3]),
    )
    newest_first = [ids[4], *sorted(ids[2:4], key=UUID, reverse=True), ids[1], ids[0]]

    def page(**params: str | int) -> dict[str, str | int]:
        return {"customer_id": customer, **params}

    whole = (await api.get("/orders", params=page(limit=5))).json()
    first = (await api.get("/orders", params=page(limit=2))).json()
    # A new order between two pages: an offset would now show one of the first page again.
    newer = (await api.post("/orders", json=order_body(sku, 1, customer))).json()["id"]
    second = (await api.get("/orders", params=page(limit=2, cursor=first["next_cursor"]))).json()
    third = (await api.get("/orders", params=page(limit=2, cursor=second["next_cursor"]))).json()
    out_of_stock = (await api.get("/orders", params=page(status="out_of_stock"))).json()

    assert [o["id"] for o in whole["items"]] == newest_first
    assert whole["next_cursor"] is None, "exactly a page left is the last page"
    assert [o["id"] for o in first["items"] + second["items"] + third["items"]] == newest_first
    assert first["next_cursor"]
    assert second["next_cursor"]
    assert third["next_cursor"] is None
    assert third["limit"] == 2
    assert newer not in [o["id"] for o in second["items"] + third["items"]]
    assert [o["id"] for o in out_of_stock["items"]] == [ids[0]]
    bad_status = await api.get("/orders", params={"status": "shipped"})
    assert bad_status.status_code == 422


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not a cursor",
        urlsafe_base64("not a cursor"),
        urlsafe_base64(f"1700000000000000.{'0' * 31}"),  # an order id one digit short
        urlsafe_base64(f"{10**18}.{uuid4().hex}"),  # a time past any datetime
        "x" * 201,
    ],
)
async def test_a_cursor_the_api_did_not_give_out_is_422_saying_so(
    api: httpx.AsyncClient, cursor: str
) -> None:
    response = await api.get("/orders", params={"cursor": cursor})

    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["query", "cursor"]
    assert "next_cursor" in problem["msg"], problem


async def test_an_offset_is_refused_with_a_pointer_to_the_cursor(api: httpx.AsyncClient) -> None:
    response = await api.get("/orders", params={"offset": 50})

    assert response.status_code == 422
    assert "cursor" in str(response.json()["detail"])
    assert "next_cursor" in str(response.json()["detail"])


@pytest.mark.parametrize(
    ("only", "index"),
    [
        ("every order", "orders_created_at_idx"),
        ("one customer", "orders_customer_idx"),
        ("one API key", "orders_api_key_idx"),
    ],
)
async def test_a_page_after_a_cursor_is_read_in_index_order_from_the_cursor_on(
    pool: asyncpg.Pool, only: str, index: str
) -> None:
    # A customer and a key no other test uses: with one as common as C100 in the statistics,
    # walking the created_at index and filtering can rightly look cheaper than this index.
    customer = f"C-{uuid4().hex}" if only == "one customer" else None
    key = 2_000_000_000 if only == "one API key" else None
    async with pool.acquire() as conn, conn.transaction():
        # The test database is small enough for a sequential scan, or a bitmap scan of the few
        # matching rows and a sort, to look cheaper: what is checked is that the index can give
        # the page in order from the cursor on, as it must on a large table.
        await conn.execute("SET LOCAL enable_seqscan = off")
        await conn.execute("SET LOCAL enable_bitmapscan = off")
        rows = await conn.fetch(
            f"EXPLAIN {store.LIST_ORDERS}", customer, None, key, datetime.now(UTC), uuid4(), 51
        )
    plan = "\n".join(row[0] for row in rows)

    assert f"Index Scan using {index} on orders" in plan, plan
    assert "Index Cond: " in plan, plan
    assert "ROW(created_at, id) < ROW(" in plan, plan
    assert "Sort" not in plan, plan


async def test_an_unknown_misspelt_or_repeated_filter_of_the_order_list_is_422(
    api: httpx.AsyncClient,
) -> None:
    # A NUL is no text PostgreSQL can compare: refused as input, not a 500 from the database.
    for params in (
        {"customer": "C100"},
        {"": "x"},
        {"limit": "0"},
        {"limit": "201"},
        {"customer_id": "C\x00"},
    ):
        response = await api.get("/orders", params=params)
        assert response.status_code == 422, params
        assert response.json()["detail"]
    twice = await api.get("/orders", params=[("status", "paid"), ("status", "pending")])
    assert twice.status_code == 422
    assert twice.json()["detail"] == "query parameters given more than once: status"


async def test_products_lists_the_seeded_catalogue(api: httpx.AsyncClient) -> None:
    response = await api.get("/products")

    assert response.status_code == 200
    products = {p["sku"]: p for p in response.json()}
    assert len([s for s in products if not s.startswith("TEST-")]) >= 8
    assert products["TSHIRT-BLK-M"]["price"] == "19.90"
    assert products["TSHIRT-GRY-S"]["name"]


async def test_health_is_200_while_the_database_answers(api: httpx.AsyncClient) -> None:
    response = await api.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "up"}


async def test_health_is_503_when_the_database_does_not_answer(settings: Settings) -> None:
    async with api_client(
        settings.model_copy(
            update={"database_url": "postgresql://nobody@127.0.0.1:1/x", **OPEN_API}
        )
    ) as client:
        health = await client.get("/health")
        placed = await client.post("/orders", json=order_body("TSHIRT-BLK-M"))

    assert health.status_code == 503
    assert placed.status_code == 503
    assert "database is unavailable" in placed.json()["detail"]
    assert health.headers.get("Retry-After") == placed.headers.get("Retry-After") == "1"


BAD_ORDERS = {
    "missing email": {"customer_id": "C1", "items": [{"sku": "TSHIRT-BLK-M", "qty": 1}]},
    "missing items": {"customer_id": "C1", "email": "c1@example.com"},
    "empty items": {"customer_id": "C1", "email": "c1@example.com", "items": []},
    "zero qty": {
        "customer_id": "C1",
        "email": "c1@example.com",
        "items": [{"sku": "TSHIRT-BLK-M", "qty": 0}],
    },
    "negative qty": {
        "customer_id": "C1",
        "email": "c1@example.com",
        "items": [{"sku": "TSHIRT-BLK-M", "qty": -3}],
    },
    "fractional qty": {
        "customer_id": "C1",
        "email": "c1@example.com",
        "items": [{"sku": "TSHIRT-BLK-M", "qty": 1.5}],
    },
    "qty as text": {
        "customer_id": "C1",
        "email": "c1@example.com",
        "items": [{"sku": "TSHIRT-BLK-M", "qty": "2"}],
    },
    "qty beyond any int column": {
        "customer_id": "C1",
        "email": "c1@example.com",
        "items": [{"sku": "TSHIRT-BLK-M", "qty": 10**12}],
    },
    "absurd qty": {
        "customer_id": "C1",
        "email": "c1@example.com",
        "items": [{"sku": "TSHIRT-BLK-M", "qty": 1001}],
    },
    "bad email": {
        "customer_id": "C1",
        "email": "not-an-email",
        "items": [{"sku": "TSHIRT-BLK-M", "qty": 1}],
    },
    "empty customer": {
        "customer_id": "",
        "email": "c1@example.com",
        "items": [{"sku": "TSHIRT-BLK-M", "qty": 1}],
    },
    "unknown field": {
        "customer_id": "C1",
        "email": "c1@example.com",
        "items": [{"sku": "TSHIRT-BLK-M", "qty": 1}],
        "discount": 50,
    },
    "same sku twice": {
        "customer_id": "C1",
        "email": "c1@example.com",
        "items": [{"sku": "TSHIRT-BLK-M", "qty": 1}, {"sku": "TSHIRT-BLK-M", "qty": 2}],
    },
    "too many lines": {
        "customer_id": "C1",
        "email": "c1@example.com",
        "items": [{"sku": f"S{i}", "qty": 1} for i in range(51)],
    },
    "items not a list": {"customer_id": "C1", "email": "c1@example.com", "items": "TSHIRT-BLK-M"},
}


async def test_an_order_after_a_price_change_is_stored_at_the_new_price(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(stock=10)
    first = await api.post("/orders", json=order_body(sku, qty=2))
    await pool.execute("UPDATE products SET price = 12.50 WHERE sku = $1", sku)

    second = await api.post("/orders", json=order_body(sku, qty=2))

    # The API had read the old price for the first order; the second is stored at the new one,
    # in the order, its lines and its event alike.
    assert first.json()["total"] == "20.00"
    assert second.status_code == 201, second.text
    order = second.json()
    assert order["total"] == "25.00"
    assert order["items"][0]["unit_price"] == "12.50"
    stored = await pool.fetchrow(
        """
        SELECT o.total, i.unit_price, e.payload
        FROM orders o
        JOIN order_items i ON i.order_id = o.id
        JOIN event_outbox e ON e.order_id = o.id
        WHERE o.id = $1
        """,
        UUID(order["id"]),
    )
    assert stored is not None
    assert (stored["total"], stored["unit_price"]) == (Decimal("25.00"), Decimal("12.50"))
    payload = json.loads(stored["payload"])
    assert (payload["total"], payload["items"][0]["unit_price"]) == ("25.00", "12.50")


@pytest.mark.parametrize("body", BAD_ORDERS.values(), ids=BAD_ORDERS.keys())
async def test_bad_order_is_422_with_a_reason_and_stores_nothing(
    api: httpx.AsyncClient, pool: asyncpg.Pool, body: dict[str, object]
) -> None:
    before = await counts(pool)

    response = await api.post("/orders", json=body)

    assert response.status_code == 422, response.text
    assert response.json()["detail"]
    assert await counts(pool) == before


async def test_unknown_sku_is_422_naming_it_and_stores_nothing(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    known = await new_product(stock=5)
    before = await counts(pool)
    body = {
        "customer_id": "C1",
        "email": "c1@example.com",
        "items": [{"sku": known, "qty": 1}, {"sku": "NO-SUCH-SKU", "qty": 1}],
    }

    response = await api.post("/orders", json=body)

    assert response.status_code == 422
    assert response.json()["detail"] == "unknown sku: NO-SUCH-SKU"
    assert await counts(pool) == before


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b"[]", b"null"], ids=["broken", "empty", "array", "null"]
)
async def test_malformed_json_is_422_and_stores_nothing(
    api: httpx.AsyncClient, pool: asyncpg.Pool, raw: bytes
) -> None:
    before = await counts(pool)

    response = await api.post("/orders", content=raw, headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert response.json()["detail"]
    assert await counts(pool) == before


async def test_oversized_body_is_413_whether_declared_or_streamed(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    before = await counts(pool)
    big = json.dumps(order_body("TSHIRT-BLK-M") | {"padding": "x" * 10_000}).encode()

    declared = await api.post("/orders", content=big, headers={"content-type": "application/json"})

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    streamed = await api.post(
        "/orders", content=chunks(), headers={"content-type": "application/json"}
    )

    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert "larger than 4096 bytes" in streamed.json()["detail"]
    assert await counts(pool) == before


async def test_largest_possible_order_is_accepted(
    api: httpx.AsyncClient, new_product: NewProduct
) -> None:
    """50 lines of 1000 at the highest price a product can have still fit every column."""
    skus = [await new_product(stock=1, price=Decimal("9999999999.99")) for _ in range(50)]
    body = {
        "customer_id": "C-BIG",
        "email": "big@example.com",
        "items": [{"sku": sku, "qty": 1000} for sku in skus],
    }

    response = await api.post("/orders", json=body)

    assert response.status_code == 201, response.text
    assert response.json()["total"] == "499999999999500.00"


async def test_retry_with_the_same_idempotency_key_returns_the_first_order(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(stock=5)
    key = {"Idempotency-Key": str(uuid4())}
    first = await api.post("/orders", json=order_body(sku, 2), headers=key)
    before = await counts(pool)

    again = await api.post("/orders", json=order_body(sku, 2), headers=key)

    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await counts(pool) == before


async def test_same_idempotency_key_with_a_different_body_is_refused(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(stock=5)
    key = {"Idempotency-Key": str(uuid4())}
    await api.post("/orders", json=order_body(sku, 1), headers=key)
    before = await counts(pool)

    other = await api.post("/orders", json=order_body(sku, 3), headers=key)

    assert other.status_code == 422
    assert "already used with a different request" in other.json()["detail"]
    assert await counts(pool) == before


async def test_concurrent_requests_with_one_idempotency_key_make_one_order(
    api: httpx.AsyncClient, pool: asyncpg.Pool, new_product: NewProduct
) -> None:
    sku = await new_product(stock=5)
    key = {"Idempotency-Key": str(uuid4())}
    before = await counts(pool)

    responses = await asyncio.gather(
        *(api.post("/orders", json=order_body(sku, 1), headers=key) for _ in range(8))
    )

    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert await counts(pool) == (before[0] + 1, before[1] + 1, before[2] + 1)


async def test_an_empty_or_huge_idempotency_key_is_422(api: httpx.AsyncClient) -> None:
    for key in ("", "k" * 256):
        response = await api.post(
            "/orders", json=order_body("TSHIRT-BLK-M"), headers={"Idempotency-Key": key}
        )
        assert response.status_code == 422, key


async def test_a_connection_that_broke_as_its_server_died_is_a_503_not_a_500(
    settings: Settings,
) -> None:
    # What asyncpg raised from a pooled connection at the moment a primary was killed.
    app = create_app(settings.model_copy(update=OPEN_API))

    @app.get("/dying")
    async def dying() -> None:
        raise asyncpg.InternalClientError(
            "cannot switch to state 12; another operation is in progress"
        )

    async with app_client(app) as client:
        response = await client.get("/dying")

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
