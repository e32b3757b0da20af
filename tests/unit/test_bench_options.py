"""The benchmark's pure parts: its wrk script ships with the package, and its options hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from acme_orders.core import consumer, orders, outbox
from acme_orders.inventory import stock
from acme_orders.notification import email
from acme_orders.order_api import store
from acme_orders.payment import charge
from acme_orders_bench import ceilings, load
from acme_orders_bench.runner import BenchOptions
from acme_orders_bench.system import instance_names


def options(**changes: object) -> BenchOptions:
    fields: dict[str, object] = {
        "attach": None,
        "rate": 250.0,
        "duration": 10.0,
        "orders": None,
        "warmup": 2.0,
        "connections": None,
        "threads": 1,
        "payment_success_rate": 1.0,
        "output": None,
        "ceilings": True,
        "ceiling_seconds": 5,
        "drain": None,
    }
    fields.update(changes)
    return BenchOptions(**fields)  # type: ignore[arg-type]


def test_load_script_is_package_data() -> None:
    with load.script_file() as script:
        assert isinstance(script, Path)
        assert "function delay()" in script.read_text()


def test_orders_at_a_rate_set_the_duration() -> None:
    assert options(orders=5000, rate=250.0).measured_seconds == 20.0


@pytest.mark.parametrize(
    "bad",
    [
        {"orders": 100, "rate": None},
        {"rate": 0.0},
        {"duration": 0.5},
        {"connections": 1, "threads": 2},
        {"payment_success_rate": 1.5},
        {"ceiling_seconds": 0},
        {"drain": 1000},  # with the default --rate of these tests
        {"drain": 1000, "rate": None, "attach": "http://127.0.0.1:8000"},
        {"drain": 0, "rate": None},
        {"sweep": (100.0, 200.0)},  # with the default --rate of these tests
        {"sweep": (100.0, 200.0), "rate": None, "orders": 1000},
        {"history": 0},
        {"history": 1000, "attach": "http://127.0.0.1:8000"},
        {"history": 1000, "history_days": 0},
        {"purge": True, "attach": "http://127.0.0.1:8000"},
        {"purge": True, "sweep": (100.0, 200.0), "rate": None},
        {"ceiling_batch": 0},
    ],
)
def test_impossible_options_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each case has its own message)
        options(**bad).validate()


def test_drain_alone_is_accepted() -> None:
    options(drain=100_000, rate=None).validate()


def test_a_sweep_on_history_and_a_purge_on_history_are_accepted() -> None:
    options(sweep=(100.0, 250.0, None), rate=None, history=5_000_000).validate()
    options(history=5_000_000, purge=True).validate()


def test_connections_grow_with_the_rate() -> None:
    assert load.default_connections(50) == 8
    assert load.default_connections(1000) == 100
    assert load.default_connections(None) == 32


def test_pgbench_script_has_no_stray_variables() -> None:
    """pgbench reads any ":word" as a variable: only the script's own may appear."""
    script = ceilings.pgbench_script(["A-1", "B-2", "C-3"], batch=4)
    used = set(re.findall(r"(?<!:):([A-Za-z_][A-Za-z0-9_]*)", script))
    assert used == {"lo", "hi", "qty", "cust", "seed", "placed_ms"}


def normalised(statement: str) -> str:
    return " ".join(statement.split())


@pytest.mark.parametrize(
    "statement",
    [
        store.PLACE_ORDERS,
        consumer.RECORD_PROCESSED,
        orders.LOCK_ORDERS,
        orders.SET_STATUSES,
        stock.LOCK_PRODUCTS,
        stock.RECORD_RESERVATIONS,
        charge.RECORD_PAYMENTS,
        email.RECORD_NOTIFICATIONS,
        outbox.INSERT_EVENTS,
        outbox.CLAIM_FOR_PUBLISHING,
    ],
    ids=lambda statement: normalised(statement)[:40],
)
def test_the_database_ceiling_runs_the_pipelines_own_statements(statement: str) -> None:
    """Every statement an order goes through, as the service runs it, parameters aside."""
    script = normalised(ceilings.pgbench_script(["A-1", "B-2", "C-3"]))
    parts = re.split(r"\$\d+", normalised(statement))

    position = 0
    for part in parts:
        found = script.find(part.strip(), position)
        assert found >= 0, f"{part!r} of the statement is not in the script"
        position = found + len(part.strip())


def test_instances_start_every_service_but_the_api_that_many_times() -> None:
    names = instance_names(("api", "publisher", "inventory"), 2)

    assert names == ("api", "publisher", "publisher#2", "inventory", "inventory#2")
    assert instance_names(("api", "publisher"), 1) == ("api", "publisher")


@pytest.mark.parametrize(
    "changes", [{"instances": 0}, {"instances": 2, "attach": "http://127.0.0.1:8000"}]
)
def test_instances_need_a_system_of_the_benchs_own(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="--instances"):
        options(**changes).validate()


def test_the_database_ceiling_batches_as_the_services_do() -> None:
    """The API stores the batch's orders with one statement (its group commit); each consumer
    handles the batch's events in one transaction; the publisher claims up to OUTBOX_BATCH_SIZE
    rows."""
    script = ceilings.pgbench_script(["A-1", "B-2", "C-3"], batch=3, claim_limit=200)

    assert script.count("INSERT INTO orders ") == 1
    # inventory, payment, notification, publisher: one transaction each for the whole batch.
    assert script.count("BEGIN;") == 4
    assert "generate_series(1, 3)" in script
    assert "LIMIT (200)" in script
    with pytest.raises(ValueError, match="at least one order"):
        ceilings.pgbench_script(["A-1"], batch=0)
