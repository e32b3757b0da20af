"""Every Prometheus metric of the system, defined once, and the helpers that record them.

The API exports them on its own `/metrics`, each worker on its metrics server (`metrics_server`).
The hot paths (a consumer's batch, a relayed outbox batch, an HTTP request) only increment
counters and observe histograms whose label children were bound in advance, once per batch where
they can, and query nothing. The gauges that need SQL (outbox backlog, orders by status) are
sampled by the publisher alone, every few seconds (it reads `outbox.backlog` and
`orders.count_recent_orders`); they and the relay's histograms are exported by the publisher only
(`export_publisher_metrics`), so that no other process shows them as zeros; the API's group
commit histogram likewise by the API only (`export_api_metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Final, Literal, get_args

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from acme_orders.core.events import EVENT_TYPE_BY_NAME, Event
from acme_orders.core.orders import OrderStatus

# What became of a message a consumer took off its queue.
Outcome = Literal[
    "handled", "duplicate", "retried", "dead_lettered", "skipped", "ignored", "given_back"
]
OUTCOMES: Final[tuple[Outcome, ...]] = get_args(Outcome)
# The event_type label of a message that is not one of the system's events (garbage, or a type
# from the future): bounded, whatever a publisher puts on the queue.
OTHER_EVENT_TYPE: Final = "other"

# Seconds: from a millisecond (a small batch on a quiet machine) to ten (a stalled database).
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Messages of one micro-batch: at most PREFETCH_COUNT (32 by default, 10,000 at most).
BATCH_SIZE_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
OUTBOX_BATCH_BUCKETS: Final = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

# How often the publisher samples the gauges that cost a query, and how far back the orders gauge
# looks: orders has no index on status (db/004), so counting them reads the rows of the window
# through orders_created_at_idx; a short window keeps that cheap at any table size.
OUTBOX_SAMPLE_INTERVAL: Final = 5.0
ORDERS_SAMPLE_INTERVAL: Final = 15.0
ORDERS_WINDOW: Final = timedelta(minutes=5)

EVENTS_CONSUMED = Counter(
    "acme_events_consumed",
    "Messages a consumer took off its queue, by event type and what became of them: handled "
    "(first time, committed), duplicate (handled before: only acked), retried (the handler "
    "failed; sent to wait in a retry queue), dead_lettered (can never succeed: parked in "
    "<queue>.dlq), skipped (a type no route of the queue takes, or on a routing key not its "
    "own: parked in <queue>.dlq), ignored (a type the service's routes say it ignores), "
    "given_back (its dead-letter copy failed: requeued after a pause, to be tried again). "
    "event_type 'other': not an event of the catalogue.",
    ["service", "event_type", "outcome"],
)
EVENTS_EMITTED = Counter(
    "acme_events_emitted",
    "Events a service wrote to the outbox, counted once their transaction committed (the API: "
    "OrderPlaced of each new order).",
    ["service", "event_type"],
)
HANDLER_SECONDS = Histogram(
    "acme_handler_seconds",
    "Seconds a consumer took to handle one batch of its queue in one transaction, from the "
    "idempotency check through the handlers and outbox writes to the commit (batches that "
    "committed; one observation per batch).",
    ["service", "queue"],
    buckets=LATENCY_BUCKETS,
)
CONSUMER_BATCH_SIZE = Histogram(
    "acme_consumer_batch_size",
    "Messages a consumer took off its queue at once: one micro-batch (at most PREFETCH_COUNT).",
    ["service", "queue"],
    buckets=BATCH_SIZE_BUCKETS,
)
CONSUMER_DB_RETRIES = Counter(
    "acme_consumer_db_retries",
    "Batches a consumer retried in place, unacked, because the database was unavailable.",
    ["service", "queue"],
)
OUTBOX_PUBLISHED = Counter(
    "acme_outbox_published",
    "Outbox events the publisher relayed: published, confirmed by RabbitMQ and marked SENT.",
    ["event_type"],
)
OUTBOX_RELAY_SECONDS = Histogram(
    "acme_outbox_relay_seconds",
    "Seconds the publisher took to relay one outbox batch: claim, publish with confirms, mark "
    "SENT, commit (batches that committed).",
    buckets=LATENCY_BUCKETS,
    registry=None,
)
OUTBOX_RELAY_BATCH_SIZE = Histogram(
    "acme_outbox_relay_batch_size",
    "Outbox rows relayed in one batch (at most OUTBOX_BATCH_SIZE).",
    buckets=OUTBOX_BATCH_BUCKETS,
    registry=None,
)
OUTBOX_BACKLOG = Gauge(
    "acme_outbox_backlog",
    f"NEW outbox rows: events waiting to be published. Sampled by the publisher every "
    f"{OUTBOX_SAMPLE_INTERVAL:g}s.",
    registry=None,
)
OUTBOX_OLDEST_NEW_AGE = Gauge(
    "acme_outbox_oldest_new_age_seconds",
    f"Age of the oldest NEW outbox row, by the database's clock; 0 when there is none. Sampled by "
    f"the publisher every {OUTBOX_SAMPLE_INTERVAL:g}s.",
    registry=None,
)
ORDERS = Gauge(
    "acme_orders",
    f"Orders placed in the last {ORDERS_WINDOW.total_seconds() / 60:g} minutes, by current "
    f"status. Sampled by the publisher every {ORDERS_SAMPLE_INTERVAL:g}s.",
    ["status"],
    registry=None,
)
ORDERS_EXPIRED = Counter(
    "acme_orders_expired",
    "Orders the publisher cancelled because they were not final ORDER_TIMEOUT seconds after they "
    "were placed (each is also an OrderCancelled with reason timed_out).",
    registry=None,
)
API_ORDERS_PER_INSERT = Histogram(
    "acme_api_orders_per_insert",
    "Orders the API stored with one statement and one commit: those that arrived while its last "
    "insert ran (group commit, at most API_INSERT_BATCH).",
    buckets=BATCH_SIZE_BUCKETS,
    registry=None,
)
HTTP_REQUEST_SECONDS = Histogram(
    "acme_http_request_seconds",
    "Seconds the API took to answer a request, by method, route template ('unmatched' for no "
    "route) and status code.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)

# Only the publisher exports these (see export_publisher_metrics): unlabelled, they would show as
# zeros in every other process.
PUBLISHER_METRICS: Final[tuple[MetricWrapperBase, ...]] = (
    OUTBOX_RELAY_SECONDS,
    OUTBOX_RELAY_BATCH_SIZE,
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST_NEW_AGE,
    ORDERS,
    ORDERS_EXPIRED,
)
# Only the API exports these (see export_api_metrics), for the same reason.
API_METRICS: Final[tuple[MetricWrapperBase, ...]] = (API_ORDERS_PER_INSERT,)
_exported: set[MetricWrapperBase] = set()


def export_publisher_metrics() -> None:
    """Add the publisher's own metrics to what this process exports; once is enough."""
    _export(PUBLISHER_METRICS)


def export_api_metrics() -> None:
    """Add the API's own metrics to what this process exports; once is enough."""
    _export(API_METRICS)


def _export(metrics: Iterable[MetricWrapperBase]) -> None:
    for metric in metrics:
        if metric not in _exported:
            REGISTRY.register(metric)
            _exported.add(metric)


ALL_METRICS: Final[tuple[MetricWrapperBase, ...]] = (
    EVENTS_CONSUMED,
    EVENTS_EMITTED,
    HANDLER_SECONDS,
    CONSUMER_BATCH_SIZE,
    CONSUMER_DB_RETRIES,
    OUTBOX_PUBLISHED,
    OUTBOX_RELAY_SECONDS,
    OUTBOX_RELAY_BATCH_SIZE,
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST_NEW_AGE,
    ORDERS,
    ORDERS_EXPIRED,
    API_ORDERS_PER_INSERT,
    HTTP_REQUEST_SECONDS,
)

_SAMPLE_SUFFIXES: Final = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def exported_names() -> set[str]:
    """The names of every sample Prometheus scrapes from these metrics (acme_events_consumed_total,
    acme_handler_seconds_bucket, ...): what a PromQL query may name."""
    return {
        family.name + suffix
        for metric in ALL_METRICS
        for family in metric.describe()
        for suffix in _SAMPLE_SUFFIXES[family.type]
    }


def event_type_label(name: object) -> str:
    """The event_type label of a message: its type when it is one of the catalogue's events,
    'other' for anything else, so that no message can add series of its own."""
    return name if isinstance(name, str) and name in EVENT_TYPE_BY_NAME else OTHER_EVENT_TYPE


class ConsumerMetrics:
    """The metrics of one consumer (a service reading one queue), with their label children bound
    once; every method costs a few dictionary lookups and increments."""

    __slots__ = (
        "_consumed",
        "_emitted",
        "_only_event_type",
        "batch_size",
        "db_retries",
        "handler_seconds",
        "service",
    )

    def __init__(self, service: str, queue: str, event_types: Iterable[str]) -> None:
        self.service = service
        event_types = list(event_types)
        self._consumed: dict[tuple[str, str], Counter] = {
            (event_type, outcome): EVENTS_CONSUMED.labels(service, event_type, outcome)
            for event_type in [*event_types, OTHER_EVENT_TYPE]
            for outcome in OUTCOMES
        }
        self._emitted: dict[str, Counter] = {}
        # A queue of one event type (most of them) counts a whole batch with one increment.
        self._only_event_type = event_types[0] if len(event_types) == 1 else None
        self.batch_size = CONSUMER_BATCH_SIZE.labels(service, queue)
        self.handler_seconds = HANDLER_SECONDS.labels(service, queue)
        self.db_retries = CONSUMER_DB_RETRIES.labels(service, queue)

    def consumed(self, event_type: str, outcome: Outcome, count: int = 1) -> None:
        child = self._consumed.get((event_type, outcome))
        if child is None:
            # A catalogue event this consumer has no route for (skipped, dead-lettered).
            child = self._consumed[(event_type, outcome)] = EVENTS_CONSUMED.labels(
                self.service, event_type, outcome
            )
        child.inc(count)

    def settled(self, handled: Sequence[Event], duplicates: Sequence[Event]) -> None:
        """Count a committed batch: the events it handled, and its duplicates (handled before,
        or repeated within the batch)."""
        if not duplicates and self._only_event_type is not None:
            # Every event new and distinct, on a queue of one event type: the usual case.
            self._consumed[(self._only_event_type, "handled")].inc(len(handled))
            return
        counts: dict[tuple[str, Outcome], int] = {}
        outcomes: tuple[tuple[Outcome, Sequence[Event]], ...] = (
            ("handled", handled),
            ("duplicate", duplicates),
        )
        for outcome, events in outcomes:
            for event in events:
                key = (event.event_type, outcome)
                counts[key] = counts.get(key, 0) + 1
        for (event_type, outcome), count in counts.items():
            self.consumed(event_type, outcome, count)

    def emitted(self, events: Sequence[Event]) -> None:
        """Count the events a committed batch wrote to the outbox."""
        if not events:
            return
        counts: dict[str, int] = {}
        for event in events:
            counts[event.event_type] = counts.get(event.event_type, 0) + 1
        for event_type, count in counts.items():
            child = self._emitted.get(event_type)
            if child is None:
                child = self._emitted[event_type] = EVENTS_EMITTED.labels(self.service, event_type)
            child.inc(count)


_published: dict[str, Counter] = {}


def record_relayed(event_types: Sequence[str], seconds: float) -> None:
    """Count an outbox batch the publisher relayed (its rows' event types), and its duration."""
    counts: dict[str, int] = {}
    for event_type in event_types:
        counts[event_type] = counts.get(event_type, 0) + 1
    for event_type, count in counts.items():
        child = _published.get(event_type)
        if child is None:
            child = _published[event_type] = OUTBOX_PUBLISHED.labels(event_type_label(event_type))
        child.inc(count)
    OUTBOX_RELAY_SECONDS.observe(seconds)
    OUTBOX_RELAY_BATCH_SIZE.observe(len(event_types))


def set_outbox_gauges(new_rows: int, oldest_new_age: float) -> None:
    """The outbox's NEW rows, and the age of the oldest in seconds (0 when none)."""
    OUTBOX_BACKLOG.set(new_rows)
    OUTBOX_OLDEST_NEW_AGE.set(max(0.0, oldest_new_age))


def set_orders_gauge(counts: dict[OrderStatus, int]) -> None:
    for status, count in counts.items():
        ORDERS.labels(status.value).set(count)
