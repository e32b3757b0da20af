"""The event catalogue as an AsyncAPI 3.0 document, built from the code: the event models (their
JSON schemas, as pydantic writes them), their routing keys, who publishes each (`core.topology`) and
who consumes it (the services' queues and binding keys).

`scripts/generate_asyncapi.py` writes it to `asyncapi.yaml` at the repository root, and a test
fails when that file and this function disagree, so the document cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from acme_orders import __version__
from acme_orders.core import topology
from acme_orders.core.events import EVENT_TYPES, EXCHANGE, Event
from acme_orders.core.messaging import DEAD_LETTER_EXCHANGE, DELIVERY_LIMIT
from acme_orders.core.topology import QueueSpec

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING_VERSION = "0.3.0"
_SCHEMAS = "#/components/schemas/{model}"

_DESCRIPTION = f"""\
Every event of the Acme order pipeline. Each is a persistent JSON message on the topic exchange
`{EXCHANGE}`, its routing key the channel's address, its event type also in the AMQP `type`
property and its `event_id` in `message_id`. A service never publishes directly: it writes the
event to the `event_outbox` table in the transaction that made it true, and the publisher
service relays the outbox to RabbitMQ (with publisher confirms), so an event can arrive twice
and consumers ignore one they have already handled.

Each consuming service reads from durable quorum queues of its own, bound to the routing keys it
wants; a message that can never be handled goes to the queue's dead-letter queue `<queue>.dlq`
(through `{DEAD_LETTER_EXCHANGE}`), as does one whose handler failed on each of its attempts
(each after a longer wait in a retry queue) or that was delivered {DELIVERY_LIMIT} times.

Readers ignore fields they do not know, so adding a field is not a breaking change; changing or
removing one means a new `version`. Generated from the code by scripts/generate_asyncapi.py; do
not edit by hand."""


def _event_name(cls: type[Event]) -> str:
    return cls.__name__


def _queue_channel_id(spec: QueueSpec) -> str:
    return "queue_" + spec.name.replace(".", "_").replace("*", "any").replace("#", "all")


def _schemas() -> dict[str, Any]:
    """Each event's JSON schema as it goes over the wire, and the schemas they share."""
    _, top = models_json_schema(
        [(cls, "serialization") for cls in EVENT_TYPES], ref_template=_SCHEMAS
    )
    schemas: dict[str, Any] = top["$defs"]
    for schema in schemas.values():
        # A message carries every field of its model (pydantic writes defaults and nulls too),
        # whatever a reader would fill in when one were missing.
        if "properties" in schema:
            schema["required"] = list(schema["properties"])
    return dict(sorted(schemas.items()))


def _amqp_exchange() -> dict[str, Any]:
    return {"name": EXCHANGE, "type": "topic", "durable": True, "autoDelete": False, "vhost": "/"}


def asyncapi_document() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}

    for cls in EVENT_TYPES:
        name = _event_name(cls)
        publisher = topology.PUBLISHED_BY[cls]
        subscriptions = topology.subscriptions_of(cls.routing_key)
        consumers = topology.consumers_of(cls.routing_key)
        messages[name] = {
            "name": name,
            "title": name,
            "summary": (cls.__doc__ or "").strip(),
            "contentType": "application/json",
            "payload": {"$ref": _SCHEMAS.format(model=name)},
            "bindings": {
                "amqp": {"messageType": name, "bindingVersion": AMQP_BINDING_VERSION},
            },
        }
        consumed = (
            "; consumed by "
            + ", ".join(f"{sub.service} (queue {sub.queue.name})" for sub in subscriptions)
            if subscriptions
            else "; no service consumes it yet"
        )
        channels[name] = {
            "address": cls.routing_key,
            "title": cls.routing_key,
            "summary": f"{name}, routing key {cls.routing_key} on {EXCHANGE}",
            "description": f"Published by {publisher}{consumed}.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": _amqp_exchange(),
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
            "x-published-by": publisher,
            "x-consumed-by": consumers,
        }
        operations[f"{publisher}_publishes_{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "title": f"{publisher} publishes {name}",
            "summary": (
                f"Written to the outbox in the transaction of {publisher}, relayed to "
                f"{EXCHANGE} by the publisher."
            ),
            "messages": [{"$ref": f"#/channels/{name}/messages/{name}"}],
            "bindings": {
                "amqp": {
                    "deliveryMode": 2,
                    "mandatory": False,
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
            "tags": [{"name": publisher}],
        }

    for service, specs in topology.SUBSCRIPTIONS.items():
        for spec in specs:
            channel_id = _queue_channel_id(spec)
            received = [_event_name(cls) for cls in topology.events_of_queue(spec)]
            channels[channel_id] = {
                "address": spec.name,
                "title": spec.name,
                "summary": f"{service}'s queue, bound to {', '.join(spec.routing_keys)}",
                "description": (
                    f"A durable quorum queue bound to {EXCHANGE} with "
                    f"{', '.join(spec.routing_keys)}; its dead letters go to "
                    f"{spec.dead_letter_queue}."
                ),
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in received},
                "bindings": {
                    "amqp": {
                        "is": "queue",
                        "queue": {
                            "name": spec.name,
                            "durable": True,
                            "exclusive": False,
                            "autoDelete": False,
                            "vhost": "/",
                        },
                        "bindingVersion": AMQP_BINDING_VERSION,
                    }
                },
                "x-bound-to": list(spec.routing_keys),
            }
            operations[f"{service}_consumes_{channel_id.removeprefix('queue_')}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "title": f"{service} consumes {spec.name}",
                "summary": (
                    f"Handled in one transaction with its effects, recorded in processed_events "
                    f"under {service!r}, acked after commit."
                ),
                "messages": [
                    {"$ref": f"#/channels/{channel_id}/messages/{name}"} for name in received
                ],
                "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
                "tags": [{"name": service}],
            }

    services = [*dict.fromkeys([*topology.PUBLISHED_BY.values(), *topology.SUBSCRIPTIONS])]
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Acme Orders events",
            "version": __version__,
            "description": _DESCRIPTION,
            "tags": [{"name": service} for service in services],
        },
        "defaultContentType": "application/json",
        "servers": {
            "development": {
                "host": "127.0.0.1:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "pathname": "/",
                "description": "RabbitMQ of the quick start and of docker compose (vhost /).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": _schemas()},
    }
