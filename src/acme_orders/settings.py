"""The one settings object. Every knob comes from the environment, validated at start."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of every service; each field is read from the environment variable of the
    same name in upper case (``DATABASE_URL``, ``PAYMENT_SUCCESS_RATE``...)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    database_url: str = Field(
        "postgresql://acme:acme@127.0.0.1:5432/acme",
        description="PostgreSQL DSN of the order database.",
    )
    database_admin_url: str | None = Field(
        None,
        description=(
            "DSN of a role allowed to create roles and databases; `migrate` uses it to create "
            "the database of DATABASE_URL when that is missing. Default: user postgres on the "
            "same host."
        ),
    )
    rabbitmq_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/",
        description="AMQP URL of RabbitMQ; its vhost is honoured.",
    )
    payment_success_rate: float = Field(
        1.0, ge=0.0, le=1.0, description="Probability that a simulated charge succeeds."
    )
    api_host: str = Field("127.0.0.1", description="Address the API listens on.")
    api_port: int = Field(8000, ge=1, le=65535, description="Port the API listens on.")
    max_request_bytes: int = Field(
        65536, ge=1024, description="Largest request body the API accepts (413 beyond)."
    )
    prefetch_count: int = Field(
        32, ge=1, le=10000, description="Unacknowledged messages a consumer may hold."
    )
    db_pool_size: int = Field(8, ge=1, le=200, description="Database connections per service.")
    outbox_batch_size: int = Field(
        500, ge=1, le=10000, description="Outbox rows the publisher claims per transaction."
    )
    outbox_poll_interval: float = Field(
        5.0,
        gt=0,
        description=(
            "Seconds the publisher waits for a NOTIFY before it looks at the outbox anyway "
            "(a fallback: new rows wake it at once)."
        ),
    )
    shutdown_timeout: float = Field(
        10.0, gt=0, description="Seconds a service waits for in-flight work on SIGTERM."
    )
    log_level: str = Field("INFO", description="Python log level.")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
