"""asyncapi.yaml, the event catalogue as a spec: generated from the code, and kept so by this test.

After changing an event, a queue or who publishes what: `python scripts/generate_asyncapi.py`."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import yaml

from acme_orders.core import topology
from acme_orders.core.events import (
    EVENT_TYPES,
    EXCHANGE,
    Event,
    InventoryReleased,
    InventoryReserved,
    OrderLine,
    OrderOutOfStock,
    OrderPlaced,
    PaymentCompleted,
    PaymentFailed,
    StockLine,
    StockShortage,
)
from acme_orders.ops.asyncapi import asyncapi_document

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "asyncapi.yaml"
GENERATOR = ROOT / "scripts" / "generate_asyncapi.py"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_asyncapi_yaml_is_what_the_code_generates(document: dict[str, Any]) -> None:
    assert document == asyncapi_document(), (
        "asyncapi.yaml is out of date: run python scripts/generate_asyncapi.py"
    )


def test_the_generator_finds_the_file_up_to_date_byte_for_byte() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda cls: cls.__name__)
def test_each_routing_key_is_a_channel_with_its_publisher_consumers_and_payload(
    document: dict[str, Any], event_type: type[Event]
) -> None:
    name = event_type.__name__
    channel = document["channels"][name]

    assert channel["address"] == event_type.routing_key
    assert channel["bindings"]["amqp"]["exchange"]["name"] == EXCHANGE
    assert channel["x-published-by"] == topology.PUBLISHED_BY[event_type]
    assert channel["x-consumed-by"] == topology.consumers_of(event_type.routing_key)
    sends = [
        op
        for op in document["operations"].values()
        if op["action"] == "send" and op["channel"] == {"$ref": f"#/channels/{name}"}
    ]
    assert [op["tags"] for op in sends] == [[{"name": topology.PUBLISHED_BY[event_type]}]]
    schema = document["components"]["schemas"][name]
    assert set(schema["properties"]) == set(event_type.model_fields)


def test_each_consumer_queue_is_a_channel_its_service_receives_from(
    document: dict[str, Any],
) -> None:
    receiving = {
        op["channel"]["$ref"]: op["tags"][0]["name"]
        for op in document["operations"].values()
        if op["action"] == "receive"
    }
    by_address = {
        channel["address"]: (channel_id, channel)
        for channel_id, channel in document["channels"].items()
    }

    for service, specs in topology.SUBSCRIPTIONS.items():
        for spec in specs:
            channel_id, channel = by_address[spec.name]
            assert channel["bindings"]["amqp"]["is"] == "queue"
            assert channel["x-bound-to"] == list(spec.routing_keys)
            assert set(channel["messages"]) == {
                cls.__name__ for cls in topology.events_of_queue(spec)
            }
            assert receiving[f"#/channels/{channel_id}"] == service
    assert len(receiving) == len(topology.QUEUES)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_reference_in_the_document_resolves(document: dict[str, Any]) -> None:
    refs = _refs(document)

    assert refs
    for ref in refs:
        assert _resolve(document, ref) is not None, ref


def _examples() -> list[Event]:
    order_id = uuid4()
    line = OrderLine(sku="TSHIRT-BLK-M", qty=2, unit_price=Decimal("19.90"))
    customer = {"order_id": order_id, "customer_id": "C100", "email": "c100@example.com"}
    return [
        OrderPlaced(**customer, items=(line,), total=Decimal("39.80")),
        InventoryReserved(**customer, items=(line,), total=Decimal("39.80")),
        OrderOutOfStock(
            **customer,
            shortages=(StockShortage(sku="TSHIRT-GRY-S", requested=999, available=3),),
        ),
        InventoryReleased(order_id=order_id, items=(StockLine(sku="TSHIRT-BLK-M", qty=2),)),
        PaymentCompleted(**customer, amount=Decimal("39.80"), payment_id=uuid4()),
        PaymentFailed(**customer, amount=Decimal("39.80"), reason="card declined"),
    ]


@pytest.mark.parametrize("event", _examples(), ids=lambda event: type(event).__name__)
def test_a_message_as_the_services_publish_it_fits_its_payload_schema(
    document: dict[str, Any], event: Event
) -> None:
    # jsonschema_rs comes with schemathesis, a dev dependency.
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    name = type(event).__name__
    payload_ref = document["components"]["messages"][name]["payload"]["$ref"]
    # The schema, with the components it refers to beside it, as one JSON Schema document.
    schema = {"$ref": payload_ref, "components": document["components"]}
    body = json.loads(event.model_dump_json())

    assert set(body) == set(_resolve(document, payload_ref)["required"])
    jsonschema_rs.validate(schema, body)
    wrong = body | {"event_type": "SomethingElse"}
    assert not jsonschema_rs.is_valid(schema, wrong)
