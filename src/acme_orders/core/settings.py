"""The one settings object. Every knob comes from the environment, validated at start."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The most attempts MAX_ATTEMPTS may ask for; migrate looks for unused retry queues up to here.
MAX_ATTEMPTS_LIMIT = 20


def rabbitmq_nodes(rabbitmq_url: str) -> list[str]:
    """The nodes RABBITMQ_URL names, in its order: one AMQP URL, or several separated by commas."""
    return [node.strip() for node in rabbitmq_url.split(",") if node.strip()]


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
        description=(
            "AMQP URL of RabbitMQ; its vhost is honoured. Several nodes of a cluster: their URLs "
            "separated by commas; a service connects to the first that answers and, when that "
            "connection drops, to the next."
        ),
    )
    quorum_group_size: int = Field(
        3,
        ge=1,
        le=99,
        description=(
            "Members of each quorum queue when it is created: on a cluster of at least this "
            "many nodes, a queue and every message it confirmed survive the loss of a minority "
            "of them; a smaller cluster gives each queue all its nodes. Changing it does not "
            "change queues that exist (rabbitmq-queues grow/shrink does)."
        ),
    )
    payment_success_rate: float = Field(
        1.0, ge=0.0, le=1.0, description="Probability that a simulated charge succeeds."
    )
    payment_gateway_latency_ms: int = Field(
        0,
        ge=0,
        le=60_000,
        description=(
            "Milliseconds the simulated gateway takes to answer each charge, as a real one takes "
            "a few hundred; 0: it answers at once."
        ),
    )
    payment_gateway: Literal["simulated"] = Field(
        "simulated",
        description=(
            "The card gateway payment charges through: simulated (approves with probability "
            "PAYMENT_SUCCESS_RATE). A real gateway is one more name here (see the README: "
            "plugging in a real payment gateway)."
        ),
    )
    api_host: str = Field("127.0.0.1", description="Address the API listens on.")
    api_port: int = Field(8000, ge=1, le=65535, description="Port the API listens on.")
    max_request_bytes: int = Field(
        65536, ge=1024, description="Largest request body the API accepts (413 beyond)."
    )
    auth_disabled: bool = Field(
        False,
        description=(
            "Serve the API without API keys, to anyone who can reach it (the quick start sets it "
            "to 1). Off unless set: a deployment that forgets it is locked, not open."
        ),
    )
    auth_disabled_allow_remote: bool = Field(
        False,
        description=(
            "With AUTH_DISABLED, let the API listen on an API_HOST that is not a loopback "
            "address (otherwise it refuses to start): say so only where something else decides "
            "who can reach it, as docker compose does by publishing the port on BIND_ADDRESS."
        ),
    )
    api_key_cache_ttl: float = Field(
        5.0,
        gt=0,
        le=300,
        description=(
            "Seconds the API trusts its in-memory copy of the API keys before reading them again; "
            "a key created or revoked takes effect within this time."
        ),
    )
    api_key_grace: float = Field(
        300.0,
        ge=0,
        le=86_400,
        description=(
            "Seconds past API_KEY_CACHE_TTL the API keeps letting in the keys it last read while "
            "the database does not answer (keys it does not know get 503, not 401); past it every "
            "request with a key gets 503 with Retry-After until the keys can be read again."
        ),
    )
    board_stream_recheck: float = Field(
        30.0,
        gt=0,
        le=60,
        description=(
            "Seconds between two checks of the key an open /board/stream was opened with; the "
            "stream of a key revoked meanwhile ends at the next check."
        ),
    )
    board_max_streams: int = Field(
        20,
        ge=1,
        le=10_000,
        description=(
            "Board streams (/board/stream) one API process keeps open at once; one more is "
            "answered 503 with Retry-After."
        ),
    )
    board_stuck_after: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description=(
            "Seconds after it was placed that an order not final yet is shown on the board as "
            "stuck, with where it waits."
        ),
    )
    rate_limit_orders_per_second: float = Field(
        100.0,
        ge=0,
        description=(
            "Steady rate of POST /orders allowed to one API key (to one client address when "
            "AUTH_DISABLED), counted in each API process; beyond it 429. 0 turns the limit off."
        ),
    )
    rate_limit_burst: int = Field(
        200,
        ge=1,
        le=1_000_000,
        description="POST /orders one key may send at once on top of the steady rate.",
    )
    rate_limit_reads_per_second: float = Field(
        100.0,
        ge=0,
        description=(
            "Steady rate of reads (GET /orders, /orders/{id}, /orders/{id}/events, /products) "
            "allowed to one API key (to one client address when AUTH_DISABLED), counted in each "
            "API process apart from POST /orders; beyond it 429. 0 turns the limit off."
        ),
    )
    rate_limit_reads_burst: int = Field(
        200,
        ge=1,
        le=1_000_000,
        description="Reads one key may send at once on top of the steady rate.",
    )
    api_db_acquire_timeout: float = Field(
        2.0,
        gt=0,
        le=60,
        description=(
            "Seconds an API request waits for a free connection of its pool (DB_POOL_SIZE) before "
            "it is answered 503 with Retry-After, instead of queueing without limit."
        ),
    )
    api_statement_timeout: float = Field(
        5.0,
        ge=0.001,
        le=3600,
        description=(
            "Seconds PostgreSQL lets one statement of the API run, waiting for locks included "
            "(its statement_timeout); a statement past it is cancelled, nothing it would have "
            "stored is, and the request is answered 503 with Retry-After."
        ),
    )
    api_insert_batch: int = Field(
        64,
        ge=1,
        le=1000,
        description=(
            "Most orders the API stores with one statement and one commit: the orders that "
            "arrive while its last insert runs go into the next one together (group commit), "
            "each answered once it committed. 1: every order its own statement."
        ),
    )
    api_inserts_in_flight: int = Field(
        1,
        ge=1,
        le=200,
        description=(
            "Inserts of orders the API runs at once (each holding up to API_INSERT_BATCH orders); "
            "more are fewer orders per commit. An insert that waits (for a lock) longer than "
            "0.1 s does not count, so one stuck order does not hold up the rest, up to "
            "DB_POOL_SIZE inserts in all."
        ),
    )
    api_limit_concurrency: int = Field(
        1000,
        ge=2,
        le=1_000_000,
        description=(
            "Connections and requests in progress one API process takes on (uvicorn's "
            "limit_concurrency); a request that arrives while this many are open, its own "
            "included, is answered 503 at once."
        ),
    )
    prefetch_count: int = Field(
        32,
        ge=1,
        le=10000,
        description=(
            "Unacknowledged messages a consumer may hold, and so the largest batch it handles in "
            "one transaction."
        ),
    )
    notification_linger_ms: int = Field(
        50,
        ge=0,
        le=10000,
        description=(
            "Milliseconds a notification batch waits after its first message for more (unless it "
            "fills up): e-mails go out up to this much later, in far fewer transactions, which "
            "leaves the CPU to the services an order waits for. 0: at once."
        ),
    )
    db_pool_size: int = Field(8, ge=1, le=200, description="Database connections per service.")
    retry_initial_delay: float = Field(
        1.0,
        ge=0.01,
        le=3600,
        description=(
            "Seconds a message whose handler failed waits before its second attempt; each wait "
            "after that is twice the one before (up to RETRY_MAX_DELAY), jittered down to half "
            "of it. The wait is in a retry queue of RabbitMQ: the queue's other messages go on."
        ),
    )
    retry_max_delay: float = Field(
        60.0,
        ge=0.01,
        le=86400,
        description="Longest wait between two attempts at a message whose handler failed.",
    )
    max_attempts: int = Field(
        8,
        ge=1,
        le=MAX_ATTEMPTS_LIMIT,
        description=(
            "Attempts at a message whose handler keeps failing, the first delivery included; "
            "after the last one it is parked in its dead-letter queue with the last error. "
            "1: no retry. An outage (database, card gateway) uses up no attempt."
        ),
    )
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
    dead_letter_timeout: float = Field(
        10.0,
        gt=0,
        description=(
            "Seconds a consumer waits for RabbitMQ to confirm a dead-letter copy; without it the "
            "message is given back to its queue, not acked."
        ),
    )
    log_level: str = Field("INFO", description="Python log level.")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto",
        description=(
            "How services write their log lines: json, one JSON object per line (ts, level, "
            "service, logger, msg, and event_id, order_id, correlation_id when known); text, "
            "readable lines with the same fields appended; auto, text on a terminal and json "
            "anywhere else."
        ),
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        None,
        description=(
            "Base URL of an OpenTelemetry collector (http/protobuf, such as "
            "http://127.0.0.1:4318): when set, every service exports its spans there. Unset: "
            "no tracing, at no cost."
        ),
    )
    outbox_retention: timedelta = Field(
        timedelta(days=7),
        gt=timedelta(0),
        description=(
            "How long SENT outbox rows are kept after publishing; seconds or an ISO 8601 duration "
            "(P7D, PT12H)."
        ),
    )
    processed_events_retention: timedelta = Field(
        timedelta(days=30),
        description=(
            "How long processed_events rows are kept; an event redelivered after that would be "
            "handled again. At least 1 day and at least OUTBOX_RETENTION."
        ),
    )
    idempotency_key_retention: timedelta = Field(
        timedelta(days=1),
        gt=timedelta(0),
        description=(
            "How long an Idempotency-Key of POST /orders is remembered; a retry after that places "
            "a new order."
        ),
    )
    order_timeout: float = Field(
        900.0,
        ge=0,
        description=(
            "Seconds after which an order that is still not final (pending or reserved) is "
            "cancelled by the publisher, with reason timed_out, and its stock given back; 0 "
            "turns the expiry off."
        ),
    )
    housekeeping_interval: float = Field(
        600.0,
        gt=0,
        description="Seconds between two purges of old rows by the publisher.",
    )
    housekeeping_batch_size: int = Field(
        5000,
        ge=1,
        le=100_000,
        description="Rows deleted per transaction when purging, so no purge holds locks for long.",
    )
    # Each worker serves its Prometheus metrics and /health on a port of its own (the API serves
    # /metrics on API_PORT): fixed defaults, one per service, so that `run all` on one machine
    # has no collisions.
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the workers' metrics servers (/metrics and /health) listen on.",
    )
    publisher_metrics_port: int = Field(
        8001, ge=0, le=65535, description="Port of the publisher's /metrics and /health; 0: none."
    )
    inventory_metrics_port: int = Field(
        8002, ge=0, le=65535, description="Port of inventory's /metrics and /health; 0: none."
    )
    payment_metrics_port: int = Field(
        8003, ge=0, le=65535, description="Port of payment's /metrics and /health; 0: none."
    )
    notification_metrics_port: int = Field(
        8004, ge=0, le=65535, description="Port of notification's /metrics and /health; 0: none."
    )

    @field_validator(
        "outbox_retention", "processed_events_retention", "idempotency_key_retention", mode="before"
    )
    @classmethod
    def _seconds_from_the_environment(cls, value: object) -> object:
        # Pydantic takes a number as seconds, but not a string of digits, which is all an
        # environment variable can hold.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        return value

    @field_validator("rabbitmq_url")
    @classmethod
    def _amqp_urls(cls, value: str) -> str:
        nodes = rabbitmq_nodes(value)
        if not nodes:
            raise ValueError("RABBITMQ_URL names no node")
        for node in nodes:
            parts = urlsplit(node)
            if parts.scheme not in {"amqp", "amqps"} or not parts.hostname:
                raise ValueError(
                    f"RABBITMQ_URL: {parts.scheme or '(no scheme)'}://{parts.hostname or ''}... is "
                    "not an AMQP URL (amqp://user:password@host:port/vhost; several separated by "
                    "commas)"
                )
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format_in_any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("otel_exporter_otlp_endpoint", mode="before")
    @classmethod
    def _empty_endpoint_is_unset(cls, value: object) -> object:
        # OpenTelemetry reads an empty variable as unset; so do we.
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _retry_delays_grow(self) -> Self:
        if self.retry_max_delay < self.retry_initial_delay:
            raise ValueError(
                f"RETRY_MAX_DELAY ({self.retry_max_delay}) must be at least RETRY_INITIAL_DELAY "
                f"({self.retry_initial_delay})"
            )
        return self

    @property
    def rabbitmq_nodes(self) -> list[str]:
        return rabbitmq_nodes(self.rabbitmq_url)

    @model_validator(mode="after")
    def _processed_events_outlive_redeliveries(self) -> Self:
        # processed_events is what turns a redelivered event into a no-op: forget an event while
        # it can still come back (a requeue, a replayed dead letter, an outbox row published
        # again) and it is handled twice.
        retention = self.processed_events_retention
        if retention < timedelta(days=1):
            raise ValueError(
                f"PROCESSED_EVENTS_RETENTION is {retention}, it must be at least 1 day: it has "
                "to outlive any redelivery of an event"
            )
        if retention < self.outbox_retention:
            raise ValueError(
                f"PROCESSED_EVENTS_RETENTION ({retention}) must be at least OUTBOX_RETENTION "
                f"({self.outbox_retention}): it has to outlive any redelivery of an event"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
