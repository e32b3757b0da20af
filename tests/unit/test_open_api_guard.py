"""The API refuses to serve anyone without a key on an address other machines can reach, unless a
second setting says that is intended (docker compose, whose published port decides who reaches
it); the log says which."""

from __future__ import annotations

import logging

import pytest

from acme_orders.core.settings import Settings
from acme_orders.order_api.security import is_loopback
from acme_orders.order_api.service import may_listen


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.2", "10.1.2.3", "api.example.com"])  # noqa: S104
def test_addresses_other_machines_may_reach(host: str) -> None:
    assert not is_loopback(host)


def test_an_open_api_on_loopback_starts(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert may_listen(Settings(auth_disabled=True, api_host="127.0.0.1"))
    assert not caplog.records


def test_an_api_with_keys_starts_on_any_address(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert may_listen(Settings(auth_disabled=False, api_host="0.0.0.0"))  # noqa: S104
    assert not caplog.records


def test_an_open_api_on_a_reachable_address_is_refused_saying_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        assert not may_listen(Settings(auth_disabled=True, api_host="0.0.0.0"))  # noqa: S104
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert "refusing to start" in record.getMessage()
    assert "AUTH_DISABLED_ALLOW_REMOTE=1" in record.getMessage()


def test_an_open_api_on_a_reachable_address_starts_when_allowed_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(auth_disabled=True, auth_disabled_allow_remote=True, api_host="::")
    with caplog.at_level(logging.WARNING):
        assert may_listen(settings)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "AUTH_DISABLED_ALLOW_REMOTE allows" in record.getMessage()


def test_the_allowance_alone_opens_nothing() -> None:
    assert Settings().auth_disabled_allow_remote is False
    assert may_listen(Settings(auth_disabled_allow_remote=True, api_host="0.0.0.0"))  # noqa: S104
