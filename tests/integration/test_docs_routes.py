"""Swagger UI at /docs, in-process over ASGI, with API keys required: the page and every file it
loads come from the API itself, open to all, with a strict Content-Security-Policy; nothing
else of Swagger UI's folder can be reached, and ReDoc is gone. The page rendering in a browser
is tests/e2e/test_docs_page.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from acme_orders.core.settings import Settings
from acme_orders.order_api.routes.docs import SWAGGER_UI
from tests.support.api import api_client

# What each file the page loads must be served as.
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings.model_copy(update={"auth_disabled": False})) as client:
        yield client


def referenced(page: str) -> list[str]:
    """The URLs of the page's scripts, stylesheets and icons."""
    return re.findall(r'<(?:script|link)\b[^>]*?\b(?:src|href)="([^"]+)"', page)


async def test_the_docs_page_is_open_html_under_a_strict_content_security_policy(
    api: httpx.AsyncClient,
) -> None:
    page = await api.get("/docs")
    head = await api.head("/docs")

    assert page.status_code == head.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self';" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-cache"
    # No inline script (the policy would block it), and nothing from another origin.
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text)
    assert "http:" not in page.text
    assert "https:" not in page.text
    assert all(url.startswith("/docs/") for url in referenced(page.text))


async def test_every_file_the_docs_page_loads_is_served_with_its_content_type(
    api: httpx.AsyncClient,
) -> None:
    page = await api.get("/docs")
    urls = referenced(page.text)

    assert sorted(urls) == sorted(
        [
            "/docs/docs.js",
            f"/docs/{SWAGGER_UI.name}/swagger-ui-bundle.js",
            f"/docs/{SWAGGER_UI.name}/swagger-ui.css",
            f"/docs/{SWAGGER_UI.name}/favicon-32x32.png",
        ]
    )
    for url in urls:
        response = await api.get(url)
        assert response.status_code == 200, url
        content_type = CONTENT_TYPES[url[url.rindex(".") :]]
        assert response.headers["content-type"].startswith(content_type), url
        assert response.headers["x-content-type-options"] == "nosniff", url
        assert response.content, url
        if url.startswith(f"/docs/{SWAGGER_UI.name}/"):
            # The version is in the URL: kept for good, and a new pin is a new URL.
            assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        else:
            assert response.headers["cache-control"] == "no-cache", url
    initializer = await api.get("/docs/docs.js")
    assert 'url: "/openapi.json"' in initializer.text


@pytest.mark.parametrize(
    "path",
    [
        # Swagger UI's other files, and the folder itself: not listed, not served.
        f"/docs/{SWAGGER_UI.name}/index.html",
        f"/docs/{SWAGGER_UI.name}/swagger-initializer.js",
        f"/docs/{SWAGGER_UI.name}/swagger-ui.js",
        f"/docs/{SWAGGER_UI.name}/swagger-ui-bundle.js.map",
        f"/docs/{SWAGGER_UI.name}/index.j2",
        f"/docs/{SWAGGER_UI.name}",
        # Another version's URL, and the page's template as it is on disk.
        "/docs/swagger-ui-4.15.5/swagger-ui.css",
        "/docs/docs.html",
        # Out of the folder, with the dots encoded so that the client sends them as they are.
        f"/docs/{SWAGGER_UI.name}/%2e%2e/%2e%2e/__init__.py",
        "/docs/%2e%2e/board.html",
        "/docs/..%2f..%2fpyproject.toml",
        "/docs/board.js",
        # ReDoc and FastAPI's OAuth2 redirect page are gone with FastAPI's own /docs.
        "/redoc",
        "/docs/oauth2-redirect",
    ],
)
async def test_nothing_but_the_pages_files_is_served(api: httpx.AsyncClient, path: str) -> None:
    response = await api.get(path)

    assert response.status_code == 404, path


async def test_the_schema_stays_open_and_the_docs_stay_out_of_it(
    api: httpx.AsyncClient,
) -> None:
    schema = await api.get("/openapi.json")

    assert schema.status_code == 200
    document = schema.json()
    # OpenAPI 3.1, which only Swagger UI 5 reads.
    assert document["openapi"].startswith("3.1.")
    assert set(document["paths"]) == {
        "/orders",
        "/orders/{order_id}",
        "/orders/{order_id}/events",
        "/orders/{order_id}/cancel",
        "/products",
        "/health",
        "/metrics",
    }
