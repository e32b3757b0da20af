"""Who publishes each event and who consumes it: the one place that says so, read by the order
timeline, the live board and the AsyncAPI document (`asyncapi.yaml`).

The publisher of each event type is written here once. The consumers are not written anywhere:
they follow from each service's queues and their binding keys, matched the way RabbitMQ matches a
topic exchange, so a service that binds a new queue shows up everywhere by itself.

Like `cli`, this module knows every service (it reads their queue declarations); the core
modules never import it.
"""

from __future__ import annotations

from dataclasses import dataclass

from acme_orders.core.events import (
    EVENT_TYPES,
    Event,
    InventoryReleased,
    InventoryReserved,
    OrderOutOfStock,
    OrderPlaced,
    PaymentCompleted,
    PaymentFailed,
)
from acme_orders.core.messaging import QueueSpec
from acme_orders.inventory import service as inventory
from acme_orders.notification import service as notification
from acme_orders.order_api import service as order_api
from acme_orders.payment import service as payment

# The service whose transaction writes each event to the outbox.
PUBLISHED_BY: dict[type[Event], str] = {
    OrderPlaced: order_api.SERVICE,
    InventoryReserved: inventory.SERVICE,
    OrderOutOfStock: inventory.SERVICE,
    InventoryReleased: inventory.SERVICE,
    PaymentCompleted: payment.SERVICE,
    PaymentFailed: payment.SERVICE,
}

# Each consuming service and the queues it reads, in the order the services are listed by `cli`.
SUBSCRIPTIONS: dict[str, tuple[QueueSpec, ...]] = {
    inventory.SERVICE: inventory.QUEUES,
    payment.SERVICE: payment.QUEUES,
    notification.SERVICE: notification.QUEUES,
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
