"""Products of a test's own, so that its stock assertions see no other test's orders."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from decimal import Decimal

import asyncpg

NewProduct = Callable[..., Awaitable[str]]


async def add_product(pool: asyncpg.Pool, stock: int, price: Decimal = Decimal("10.00")) -> str:
    """A product of the test's own, so its stock assertions see no other test's orders."""
    sku = f"TEST-{secrets.token_hex(5).upper()}"
    await pool.execute(
        "INSERT INTO products (sku, name, price, stock_qty) VALUES ($1, $2, $3, $4)",
        sku,
        f"test product {sku}",
        price,
        stock,
    )
    return sku


async def stock_of(pool: asyncpg.Pool, sku: str) -> int:
    stock: int = await pool.fetchval("SELECT stock_qty FROM products WHERE sku = $1", sku)
    return stock
