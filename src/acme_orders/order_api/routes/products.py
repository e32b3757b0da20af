"""GET /products: the catalogue with its current stock."""

from __future__ import annotations

from fastapi import APIRouter

from acme_orders.order_api import store
from acme_orders.order_api.deps import Pool, Reader
from acme_orders.order_api.responses import problems
from acme_orders.order_api.schemas import ProductOut

products = APIRouter(prefix="/products", tags=["products"])


@products.get("", responses=problems(401, 403, 429, 503))
async def list_products(pool: Pool, _caller: Reader) -> list[ProductOut]:
    """The catalogue with current stock; any key may read it."""
    return await store.list_products(pool)
