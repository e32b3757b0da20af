"""Settings: the retentions and how they are written in the environment."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from acme_orders.core.database import admin_url
from acme_orders.core.settings import Settings


def test_retentions_have_safe_defaults() -> None:
    settings = Settings()

    assert settings.outbox_retention == timedelta(days=7)
    assert settings.processed_events_retention == timedelta(days=30)
    assert settings.idempotency_key_retention == timedelta(days=1)


@pytest.mark.parametrize(
    ("written", "meaning"),
    [
        ("P7D", timedelta(days=7)),
        ("PT12H", timedelta(hours=12)),
        ("P1DT30M", timedelta(days=1, minutes=30)),
        ("3600", timedelta(hours=1)),
        ("90.5", timedelta(seconds=90.5)),
    ],
)
def test_retentions_are_read_as_iso_8601_durations_or_seconds(
    monkeypatch: pytest.MonkeyPatch, written: str, meaning: timedelta
) -> None:
    monkeypatch.setenv("OUTBOX_RETENTION", written)
    monkeypatch.setenv("IDEMPOTENCY_KEY_RETENTION", written)

    settings = Settings()

    assert settings.outbox_retention == meaning
    assert settings.idempotency_key_retention == meaning


def test_processed_events_must_be_kept_at_least_as_long_as_the_outbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OUTBOX_RETENTION", "P10D")
    monkeypatch.setenv("PROCESSED_EVENTS_RETENTION", "P5D")

    with pytest.raises(ValidationError) as refused:
        Settings()

    message = str(refused.value)
    assert "PROCESSED_EVENTS_RETENTION (5 days, 0:00:00) must be at least OUTBOX_RETENTION" in (
        message
    )
    assert "redelivery" in message


def test_processed_events_must_be_kept_at_least_a_day() -> None:
    with pytest.raises(ValidationError, match=r"PROCESSED_EVENTS_RETENTION .* at least 1 day"):
        Settings(
            outbox_retention=timedelta(hours=1), processed_events_retention=timedelta(hours=23)
        )


@pytest.mark.parametrize(
    "field", ["outbox_retention", "idempotency_key_retention", "housekeeping_interval"]
)
def test_zero_is_refused(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: 0})  # type: ignore[arg-type]


def test_a_retention_that_is_not_a_duration_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_RETENTION", "a week")

    with pytest.raises(ValidationError, match="outbox_retention"):
        Settings()


def test_auth_is_on_unless_disabled_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTH_DISABLED", raising=False)
    assert Settings().auth_disabled is False

    monkeypatch.setenv("AUTH_DISABLED", "1")
    assert Settings().auth_disabled is True

    monkeypatch.setenv("AUTH_DISABLED", "0")
    assert Settings().auth_disabled is False


def test_the_rate_limit_is_on_by_default_and_zero_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("RATE_LIMIT_ORDERS_PER_SECOND", "RATE_LIMIT_BURST", "API_KEY_CACHE_TTL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.rate_limit_orders_per_second > 0
    assert settings.rate_limit_burst >= 1
    assert 0 < settings.api_key_cache_ttl <= 10

    monkeypatch.setenv("RATE_LIMIT_ORDERS_PER_SECOND", "0")
    assert Settings().rate_limit_orders_per_second == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rate_limit_orders_per_second", -1),
        ("rate_limit_burst", 0),
        ("api_key_cache_ttl", 0),
        ("api_key_grace", -1),
        # The promise: a stream's key is checked at least every minute.
        ("board_stream_recheck", 61),
        ("board_stream_recheck", 0),
        ("board_max_streams", 0),
    ],
)
def test_limits_that_make_no_sense_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})  # type: ignore[arg-type]


def test_rabbitmq_url_may_name_several_nodes() -> None:
    settings = Settings(rabbitmq_url="amqp://u:p@node1:5672/v, amqp://u:p@node2:5672/v,")

    assert settings.rabbitmq_nodes == ["amqp://u:p@node1:5672/v", "amqp://u:p@node2:5672/v"]


@pytest.mark.parametrize(
    "url", ["", " , ", "http://node1:5672/", "amqp://node1/,node2:5672", "node1:5672"]
)
def test_rabbitmq_url_that_names_no_amqp_node_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="RABBITMQ_URL"):
        Settings(rabbitmq_url=url)


@pytest.mark.parametrize(
    ("database_url", "admin"),
    [
        (
            "postgresql://acme:pw@db.example:5433/acme",
            "postgresql://postgres@db.example:5433/postgres",
        ),
        ("postgresql://acme@127.0.0.1/acme", "postgresql://postgres@127.0.0.1/postgres"),
        (
            "postgresql://acme:pw@h1:5432,h2:5433/acme?target_session_attrs=read-write",
            "postgresql://postgres@h1:5432,h2:5433/postgres?target_session_attrs=read-write",
        ),
    ],
)
def test_the_admin_dsn_is_postgres_on_the_same_hosts(database_url: str, admin: str) -> None:
    assert admin_url(Settings(database_url=database_url, database_admin_url=None)) == admin
