"""The Swagger UI files /docs serves are swagger-api's own release, byte for byte.

They come from the PyPI package swagger-ui-bundle-v2, which says it is a fork of spec-first's
swagger_ui_bundle, kept up to date with Swagger UI, while its metadata still names spec-first's
repository and maintainer (that repository has no such release: its last, 1.1.0, carries Swagger
UI 4, which cannot read OpenAPI 3.1). So the files are held to the SHA-256 of the same files in
swagger-api's swagger-ui-dist on npm, of the same version, taken with
`npm pack swagger-ui-dist@5.31.0`. A new pin of swagger-ui-bundle-v2 fails here until its files
are compared with that version's swagger-ui-dist and the hashes below replaced."""

from __future__ import annotations

import hashlib

import pytest

from acme_orders.order_api.routes.docs import SWAGGER_UI

SWAGGER_UI_DIST = "swagger-ui-5.31.0"
SWAGGER_UI_DIST_SHA256 = {
    "swagger-ui-bundle.js": "93b7b0862a80e2786f85b560be7693c2344354ffa7e7e224f850a54349724c31",
    "swagger-ui.css": "9e576f8322132c76949da47f9bb53c891373c303ea3a761ff548ffc9de50a98c",
    "favicon-32x32.png": "3ed612f41e050ca5e7000cad6f1cbe7e7da39f65fca99c02e99e6591056e5837",
}


def test_the_installed_swagger_ui_is_the_version_whose_hashes_are_recorded() -> None:
    assert SWAGGER_UI.name == SWAGGER_UI_DIST


@pytest.mark.parametrize("name", sorted(SWAGGER_UI_DIST_SHA256))
def test_each_served_swagger_ui_file_is_swagger_apis_own(name: str) -> None:
    served = (SWAGGER_UI / name).read_bytes()

    assert hashlib.sha256(served).hexdigest() == SWAGGER_UI_DIST_SHA256[name]
