"""Schemathesis against the running API: requests generated from its own /openapi.json, valid and
invalid, with an orders:write key. No answer may be a 5xx, and every answer must be one the schema
declares, with the body and headers it declares. Bad input must be refused (4xx), and a request
without the key refused too.

A real uvicorn process on a free port, with keys required and no rate limit (Schemathesis places
orders far faster than a client should), against this run's database."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from schemathesis.generation.case import Case
from schemathesis.schemas import BaseSchema

from acme_orders.ops.api_keys import Scope, create_key
from tests.support.environment import TestEnvironment
from tests.support.processes import free_port
from tests.support.system import start_service

pytestmark = pytest.mark.e2e

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    checks.ignored_auth,
    checks.missing_required_header,
    checks.unsupported_method,
]


@dataclass(frozen=True)
class LiveApi:
    url: str
    headers: dict[str, str]


@pytest.fixture(scope="module")
async def live_api(session_env: TestEnvironment, pool: asyncpg.Pool) -> AsyncIterator[LiveApi]:
    token = await create_key(pool, f"schemathesis-{secrets.token_hex(4)}", Scope.ORDERS_WRITE)
    port = free_port()
    environ = session_env.environ(
        API_PORT=str(port), AUTH_DISABLED="0", RATE_LIMIT_ORDERS_PER_SECOND="0"
    )
    process = await start_service("api", environ, "api-schemathesis")
    try:
        yield LiveApi(f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"})
    finally:
        await process.stop()


@pytest.fixture(scope="module")
def api_schema(live_api: LiveApi) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{live_api.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
# Bounded, so the whole run stays under a minute on a small machine. Derandomized, so that CI
# explores the same requests every run and a failure is one a change brought; random runs (drop
# derandomize) found the repeated and unknown query parameters and the undeclared 400.
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_operation_honours_its_schema(case: Case[Any], live_api: LiveApi) -> None:
    case.call_and_validate(base_url=live_api.url, headers=live_api.headers, checks=CHECKS)
