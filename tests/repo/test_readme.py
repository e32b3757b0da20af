"""The README's catalogue and tables stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from acme_orders.core.events import EVENT_TYPES, Event
from acme_orders.core.settings import Settings
from acme_orders.core.topology import QUEUES

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|")
    ]
    return rows[2:]  # past the header and its rule


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda cls: cls.__name__)
def test_event_catalogue_lists_each_event_with_its_routing_key_and_data(
    event_type: type[Event],
) -> None:
    rows = {row[1]: row for row in table_rows(section("Event catalogue"))}

    row = rows.get(f"`{event_type.__name__}`")
    assert row, f"{event_type.__name__} is missing from the event catalogue"
    assert row[0] == f"`{event_type.routing_key}`"
    data_fields = set(event_type.model_fields) - set(Event.model_fields)
    assert set(re.findall(r"`(\w+)`", row[4])) >= data_fields


def test_event_catalogue_lists_nothing_that_does_not_exist() -> None:
    listed = {row[1].strip("`") for row in table_rows(section("Event catalogue"))}

    assert listed == {cls.__name__ for cls in EVENT_TYPES}


def test_configuration_table_lists_every_setting() -> None:
    listed = {row[0].strip("`") for row in table_rows(section("Configuration"))}

    assert listed == {name.upper() for name in Settings.model_fields}


def test_queue_table_matches_the_declared_queues() -> None:
    listed = {
        row[0].strip("`"): set(re.findall(r"`([^`]+)`", row[2]))
        for row in table_rows(section("Queues"))
    }

    assert listed == {spec.name: set(spec.routing_keys) for spec in QUEUES}
