"""deploy/rabbitmq/definitions.json gives each service's RabbitMQ user exactly what the code needs:
every name the service configures, writes to or reads from is allowed, and no other name of the
system is. What each service needs is derived here from the code (its queues, the exchanges, the
events), so adding a queue or an event without updating the definitions fails this test.

RabbitMQ's rules (https://www.rabbitmq.com/docs/access-control): declaring an exchange or queue
needs `configure` on it, and a queue with a dead-letter exchange also `write` on that exchange and
`read` on the queue; binding a queue needs `write` on the queue and `read` on the exchange (and on
a topic exchange, topic `read` on the binding key), and so does unbinding it; publishing needs
`write` on the exchange (and topic `write` on the routing key); consuming needs `read` on the
queue; deleting a queue needs `configure` on it. A user with no topic permission on a topic
exchange may use any routing key there, so every user has one on each of ours."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from acme_orders.core import topology
from acme_orders.core.events import EVENT_TYPES, EXCHANGE
from acme_orders.core.messaging import DEAD_LETTER_EXCHANGE
from acme_orders.core.retries import RETRY_EXCHANGE, retry_queue_name
from acme_orders.core.settings import MAX_ATTEMPTS_LIMIT
from acme_orders.core.topology import QueueSpec

DEFINITIONS = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "definitions.json"
DEFAULT_EXCHANGE = "amq.default"
CONSUMERS: dict[str, tuple[QueueSpec, ...]] = dict(topology.SUBSCRIPTIONS)
ALL_QUEUES = [spec for specs in CONSUMERS.values() for spec in specs]
EVENT_KEYS = {cls.routing_key for cls in EVENT_TYPES}


@dataclass
class Needs:
    configure: set[str] = field(default_factory=set)
    write: set[str] = field(default_factory=set)
    read: set[str] = field(default_factory=set)
    topic_write: set[str] = field(default_factory=set)
    topic_read: set[str] = field(default_factory=set)
    # Topic permissions on acme.events.retry.
    retry_write: set[str] = field(default_factory=set)
    retry_read: set[str] = field(default_factory=set)


def retry_queues(spec: QueueSpec) -> set[str]:
    """Every retry queue the queue may have, whatever MAX_ATTEMPTS says."""
    return {retry_queue_name(spec.name, attempt) for attempt in range(1, MAX_ATTEMPTS_LIMIT)}


def consumer_needs(specs: tuple[QueueSpec, ...] | list[QueueSpec]) -> Needs:
    """Declare the three exchanges, each queue (with its dead-letter exchange), its DLQ and its
    retry queues (each with the retry exchange as its dead-letter exchange), bind them, consume
    the queues, publish dead letters to the dead-letter exchange and retries to the retry
    exchange, with each retry queue's name as routing key; and, for migrate, unbind and delete
    the retry queues no longer used."""
    queues = {spec.name for spec in specs}
    dlqs = {spec.dead_letter_queue for spec in specs}
    retries = {name for spec in specs for name in retry_queues(spec)}
    return Needs(
        configure={EXCHANGE, DEAD_LETTER_EXCHANGE, RETRY_EXCHANGE} | queues | dlqs | retries,
        write={DEAD_LETTER_EXCHANGE, RETRY_EXCHANGE} | queues | dlqs | retries,
        read={EXCHANGE, DEAD_LETTER_EXCHANGE, RETRY_EXCHANGE} | queues | retries,
        # Unbinding a retired key is checked as binding it is.
        topic_read={key for spec in specs for key in (*spec.routing_keys, *spec.retired_keys)},
        retry_write=retries,
        retry_read=queues | retries,
    )


NEEDS: dict[str, Needs] = {
    # migrate declares the whole topology, as every consumer does for its own part, but
    # publishes no retry.
    "acme-migrate": dataclasses.replace(consumer_needs(ALL_QUEUES), retry_write=set()),
    # Declares acme.events and publishes every event to it; reads nothing.
    f"acme-{topology.PUBLISHER}": Needs(
        configure={EXCHANGE}, write={EXCHANGE}, topic_write=EVENT_KEYS
    ),
    **{f"acme-{name}": consumer_needs(specs) for name, specs in CONSUMERS.items()},
    # `acme-orders dlq list|replay`: reads the DLQs, sends a message back to its queue through
    # the default exchange.
    "acme-operator": Needs(
        write={DEFAULT_EXCHANGE}, read={spec.dead_letter_queue for spec in ALL_QUEUES}
    ),
    # The API's board: queue depths with passive declares (which need no permission), and the
    # dead letters as `dlq list|replay` reads and replays them; nothing else. The API itself
    # never publishes an event or consumes a work queue.
    "acme-board": Needs(
        write={DEFAULT_EXCHANGE}, read={spec.dead_letter_queue for spec in ALL_QUEUES}
    ),
    # KEDA, on Kubernetes: queue depths only, with passive declares.
    "acme-keda": Needs(),
}

# Every name a permission could be asked about: the system's, and some that are not (a new
# service's queue, the bench's, RabbitMQ's own exchanges), which nobody may touch.
NAMES = (
    {EXCHANGE, DEAD_LETTER_EXCHANGE, RETRY_EXCHANGE, DEFAULT_EXCHANGE, "amq.topic", "amq.direct"}
    | {"acme.events.dlq"}
    | {spec.name for spec in ALL_QUEUES}
    | {spec.dead_letter_queue for spec in ALL_QUEUES}
    | {name for spec in ALL_QUEUES for name in retry_queues(spec)}
    | {"analytics.all-events", "bench.drain", "inventory.other", "payment.inventory.reserved.x"}
    | {"payment.inventory.reserved.retry.x", "payment.inventory.reserved.retry.1.dlq"}
    | {"payment.inventory.reserved.retry.", "analytics.all-events.retry.1"}
)
ROUTING_KEYS = (
    EVENT_KEYS
    | {key for spec in ALL_QUEUES for key in (*spec.routing_keys, *spec.retired_keys)}
    | {"#", "*.*", "payment.#", "bench.drain", "order.placed.x", "test.happened"}
)


# Every routing key a retry could be published or bound with: ours and some that are not.
RETRY_KEYS = (
    {spec.name for spec in ALL_QUEUES}
    | {name for spec in ALL_QUEUES for name in retry_queues(spec)}
    | {"#", "*.*.*", "analytics.all-events", "analytics.all-events.retry.1"}
    | {"payment.inventory.reserved.retry.x", "payment.inventory.reserved.retry.#"}
)


def definitions() -> dict[str, Any]:
    document = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def allowed(pattern: str, names: set[str]) -> set[str]:
    # RabbitMQ matches with Erlang's re (PCRE); ours are anchored alternatives of literals, which
    # Python's re reads the same way.
    return {name for name in names if re.search(pattern, name)}


def granted(user: str) -> Needs:
    document = definitions()
    [permission] = [p for p in document["permissions"] if p["user"] == user]
    [topic] = [
        t for t in document["topic_permissions"] if t["user"] == user and t["exchange"] == EXCHANGE
    ]
    [retry] = [
        t
        for t in document["topic_permissions"]
        if t["user"] == user and t["exchange"] == RETRY_EXCHANGE
    ]
    return Needs(
        configure=allowed(permission["configure"], NAMES),
        write=allowed(permission["write"], NAMES),
        read=allowed(permission["read"], NAMES),
        topic_write=allowed(topic["write"], ROUTING_KEYS),
        topic_read=allowed(topic["read"], ROUTING_KEYS),
        retry_write=allowed(retry["write"], RETRY_KEYS),
        retry_read=allowed(retry["read"], RETRY_KEYS),
    )


def test_there_is_one_user_per_service_that_talks_to_rabbitmq_and_the_api_only_its_board() -> None:
    document = definitions()
    users = {user["name"] for user in document["users"]}

    assert users == set(NEEDS)
    assert "acme-api" not in users  # the API never publishes or consumes
    # Its board reads queue depths and the dead letters, and sends those back; nothing else.
    assert granted("acme-board") == granted("acme-operator")
    assert granted("acme-keda") == Needs()  # the autoscaler looks at queue depths, nothing else
    for user in document["users"]:
        # No password in the file: each is set with rabbitmqctl change_password (README).
        assert user["password_hash"] == ""
        assert user["tags"] == [], "no management or administrator tags"
    assert {p["vhost"] for p in document["permissions"] + document["topic_permissions"]} == {"/"}


@pytest.mark.parametrize("user", sorted(NEEDS))
def test_each_user_is_allowed_exactly_what_its_service_needs(user: str) -> None:
    assert granted(user) == NEEDS[user]


def test_no_consumer_may_publish_an_event() -> None:
    for name in CONSUMERS:
        rights = granted(f"acme-{name}")
        assert EXCHANGE not in rights.write, name
        assert not rights.topic_write, name
        # Its retries go to its own retry queues only, never into a work queue.
        assert DEFAULT_EXCHANGE not in rights.write, name
        assert not rights.retry_write & {spec.name for spec in ALL_QUEUES}, name
