"""Swagger UI at /docs, served by the API itself: no CDN, so the page works without internet
access.

FastAPI's own /docs loads Swagger UI from a public CDN and starts it with an inline script, which
a strict Content-Security-Policy forbids. Here the page (`static/docs.html`) and its initializer
(`static/docs.js`) are ours, and Swagger UI's script, stylesheet and icon come from the pinned
package swagger-ui-bundle-v2, whose files are those of swagger-api's swagger-ui-dist of the same
version, byte for byte (tests/unit/test_docs_assets.py holds them to it).

Only the files the page needs are served, each by a route of its own: nothing else of the
package's folder can be reached, and no path from a request ever touches the file system.

Swagger UI's files are under a URL that names their version (/docs/swagger-ui-5.31.0/...), so a
browser may keep them for a year and a new pin is fetched anew; the page and docs.js are
revalidated each time, like the board's files.

Like /openapi.json, all of it is open (no key), and none of it is in /openapi.json.
"""

from __future__ import annotations

import functools
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response
from swagger_ui_bundle import swagger_ui_path

STATIC = resources.files("acme_orders.order_api") / "static"
# The installed Swagger UI's folder, named after its version: swagger-ui-5.31.0.
SWAGGER_UI = swagger_ui_path

# What Swagger UI needs, and nothing more (each source found by loading the page in Chromium
# and listening for violations: tests/e2e/test_docs_page.py):
# - script-src 'self': its bundle and our initializer; no inline script, no eval.
# - style-src 'self': its stylesheet.
# - img-src 'self' data:: its stylesheet draws its icons as data: SVG images.
# - connect-src 'self': it fetches /openapi.json, and "Try it out" calls the API.
DOCS_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# Our own initializer changes with our code, under the same URL: revalidated each time.
OWN_ASSET_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
# Swagger UI's files never change under a URL that names their version.
VERSIONED_ASSET_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "public, max-age=31536000, immutable",
}

docs = APIRouter(prefix="/docs", tags=["docs"], include_in_schema=False)


@functools.cache
def _docs_page() -> bytes:
    # The page names Swagger UI's folder as SWAGGER_UI, so that a new pin needs no edit of it.
    page = (STATIC / "docs.html").read_text(encoding="utf-8")
    return page.replace("SWAGGER_UI", SWAGGER_UI.name).encode()


@functools.cache
def _own_file(name: str) -> bytes:
    return (STATIC / name).read_bytes()


@functools.cache
def _swagger_ui_file(name: str) -> bytes:
    return (SWAGGER_UI / name).read_bytes()


# HEAD too, as FastAPI's own /docs answered it: what uptime checks often send.
@docs.api_route("", methods=["GET", "HEAD"])
async def docs_page() -> Response:
    return Response(_docs_page(), media_type="text/html; charset=utf-8", headers=DOCS_PAGE_HEADERS)


@docs.get("/docs.js")
async def docs_initializer() -> Response:
    return Response(
        _own_file("docs.js"), media_type="text/javascript; charset=utf-8", headers=OWN_ASSET_HEADERS
    )


# Swagger UI's files the page loads, and their types: served under the folder's name, each by a
# route of its own, and nothing else of the folder.
SWAGGER_UI_FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}


def _swagger_ui_route(name: str, media_type: str) -> None:
    async def swagger_ui_asset() -> Response:
        return Response(
            _swagger_ui_file(name), media_type=media_type, headers=VERSIONED_ASSET_HEADERS
        )

    docs.add_api_route(f"/{SWAGGER_UI.name}/{name}", swagger_ui_asset, methods=["GET"])


for _name, _media_type in SWAGGER_UI_FILES.items():
    _swagger_ui_route(_name, _media_type)
