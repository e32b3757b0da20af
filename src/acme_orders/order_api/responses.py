"""The error answers the API documents in its OpenAPI document: every status code a route may
answer, with its body and headers, so that a client (and Schemathesis) can rely on them."""

from __future__ import annotations

from typing import Any

from acme_orders.order_api.schemas import Problem

# Every error the API can answer, for the OpenAPI document: a client (and Schemathesis) can rely on
# each status code being declared, with the body it comes with.
_PROBLEMS: dict[int, dict[str, Any]] = {
    400: {"description": "The body could not be read at all (it is not UTF-8, say)."},
    401: {
        "description": "No API key, or one that is unknown or revoked.",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    403: {"description": "The API key's scope does not allow this."},
    404: {"description": "No order has this id (or none that this API key may read)."},
    413: {"description": "The body is larger than MAX_REQUEST_BYTES."},
    422: {"description": "The request is not valid; `detail` says why."},
    429: {
        "description": (
            "Too many requests of this kind (orders, or reads) from this API key; try again after "
            "Retry-After seconds."
        ),
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
    503: {
        "description": (
            "The database is unavailable or busy (no connection came free within "
            "API_DB_ACQUIRE_TIMEOUT, or a statement ran past API_STATEMENT_TIMEOUT); nothing was "
            "stored. Try again after Retry-After seconds. Past API_LIMIT_CONCURRENCY the server "
            "itself answers 503 in plain text, without Retry-After: wait a second."
        ),
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}


def problems(*codes: int, saying: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that can answer these error codes; `saying` replaces the
    generic description of some of them with the route's own."""
    return {
        code: _PROBLEMS[code]
        | {"model": Problem}
        | ({"description": saying[code]} if saying and code in saying else {})
        for code in codes
    }
