"""The system's topology as data: its services, the queues each consumer reads (their names and
binding keys on `acme.events`), and which service publishes each event. The one place that says
so: the services declare and consume these queues, and the CLI, the order timeline, the live
board, the AsyncAPI document, the benchmark and the tests read them here, without importing any
service.

The consumers of an event are not written anywhere: they follow from the queues' binding keys,
matched the way RabbitMQ matches a topic exchange, so a service that binds a new queue shows up
everywhere by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from acme_orders.core.events import (
    EVENT_TYPES,
    Event,
    InventoryReleased,
    InventoryReserved,
    OrderCancelled,
    OrderOutOfStock,
    OrderPlaced,
    PaymentCompleted,
    PaymentFailed,
)

API = "api"
PUBLISHER = "publisher"
INVENTORY = "inventory"
PAYMENT = "payment"
NOTIFICATION = "notification"
# Every service, in the order they are started and listed.
SERVICES = (API, PUBLISHER, INVENTORY, PAYMENT, NOTIFICATION)


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A durable consumer queue bound to `acme.events`, with its dead-letter queue `<name>.dlq`.

    `routing_keys`: exactly the routing keys its consumer's routes take (a message of any other
    type is a producer's bug, and is parked). `retired_keys`: binding keys an earlier release
    bound the queue with and this one does not; declaring the queue unbinds them, so that an
    upgrade needs nothing done by hand."""

    name: str
    routing_keys: tuple[str, ...]
    retired_keys: tuple[str, ...] = ()

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dlq"


# Inventory reads new orders apart from what it releases, so that releasing stock never waits
# behind a backlog of new orders.
INVENTORY_ORDER_PLACED = QueueSpec("inventory.order.placed", (OrderPlaced.routing_key,))
INVENTORY_PAYMENT_FAILED = QueueSpec("inventory.payment.failed", (PaymentFailed.routing_key,))
INVENTORY_ORDER_CANCELLED = QueueSpec("inventory.order.cancelled", (OrderCancelled.routing_key,))
PAYMENT_INVENTORY_RESERVED = QueueSpec(
    "payment.inventory.reserved", (InventoryReserved.routing_key,)
)
NOTIFICATION_ORDER_OUTCOME = QueueSpec(
    "notification.order.outcome",
    (
        PaymentCompleted.routing_key,
        PaymentFailed.routing_key,
        OrderOutOfStock.routing_key,
        OrderCancelled.routing_key,
    ),
    # Until issue 14 the queue took "payment.*", so that a new payment event arrived unasked, to
    # be acked unseen; a new type is now a choice written in the routes.
    retired_keys=("payment.*",),
)

# The service whose transaction writes each event to the outbox. OrderCancelled is the API's
# (POST /orders/{id}/cancel); the publisher's expiry of overdue orders and `acme-orders cancel`
# write it with the API's statement (orders.cancel_orders).
PUBLISHED_BY: dict[type[Event], str] = {
    OrderPlaced: API,
    OrderCancelled: API,
    InventoryReserved: INVENTORY,
    OrderOutOfStock: INVENTORY,
    InventoryReleased: INVENTORY,
    PaymentCompleted: PAYMENT,
    PaymentFailed: PAYMENT,
}

# Each consuming service and the queues it reads, in the order of SERVICES.
SUBSCRIPTIONS: dict[str, tuple[QueueSpec, ...]] = {
    INVENTORY: (INVENTORY_ORDER_PLACED, INVENTORY_PAYMENT_FAILED, INVENTORY_ORDER_CANCELLED),
    PAYMENT: (PAYMENT_INVENTORY_RESERVED,),
    NOTIFICATION: (NOTIFICATION_ORDER_OUTCOME,),
}
CONSUMER_SERVICES: tuple[str, ...] = tuple(SUBSCRIPTIONS)
QUEUES: tuple[QueueSpec, ...] = tuple(spec for specs in SUBSCRIPTIONS.values() for spec in specs)

_PUBLISHER_BY_NAME: dict[str, str] = {
    cls.model_fields["event_type"].default: service for cls, service in PUBLISHED_BY.items()
}


@dataclass(frozen=True, slots=True)
class Subscription:
    """A service reading a routing key's messages from one of its queues."""

    service: str
    queue: QueueSpec


def topic_matches(binding_key: str, routing_key: str) -> bool:
    """Whether a topic exchange routes `routing_key` to a queue bound with `binding_key`: words
    are separated by dots, `*` stands for exactly one word and `#` for zero or more."""
    return _words_match(binding_key.split("."), routing_key.split("."))


def _words_match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        # Either `#` stands for no more words, or it swallows one and is tried again.
        return _words_match(rest, words) or (bool(words) and _words_match(pattern, words[1:]))
    if not words:
        return False
    return (head in ("*", words[0])) and _words_match(rest, words[1:])


def subscriptions_of(routing_key: str) -> list[Subscription]:
    """Every (service, queue) that receives a message published with this routing key."""
    return [
        Subscription(service, spec)
        for service, specs in SUBSCRIPTIONS.items()
        for spec in specs
        if any(topic_matches(binding, routing_key) for binding in spec.routing_keys)
    ]


def consumers_of(routing_key: str) -> list[str]:
    """The services that consume messages with this routing key, each once."""
    return list(dict.fromkeys(sub.service for sub in subscriptions_of(routing_key)))


def publisher_of(event_type: str) -> str | None:
    """The service that publishes events of this type (its name, as in `event_type`), or None
    for a type that is not one of ours."""
    return _PUBLISHER_BY_NAME.get(event_type)


def events_of_queue(spec: QueueSpec) -> list[type[Event]]:
    """The event types whose routing key the queue is bound to."""
    return [
        cls
        for cls in EVENT_TYPES
        if any(topic_matches(binding, cls.routing_key) for binding in spec.routing_keys)
    ]
