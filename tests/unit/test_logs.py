"""Log lines as JSON or as readable text, each carrying the ids of what the code was working on."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from uuid import uuid4

import pytest
from asyncpg.pgproto import pgproto
from pydantic import ValidationError

from acme_orders.core.events import OrderLine, OrderPlaced
from acme_orders.core.observability.logs import (
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    current_log_context,
    event_log_context,
    log_context,
    resolve_log_format,
)
from acme_orders.core.runtime import configure_logging
from acme_orders.core.settings import Settings


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, logging.StreamHandler[io.StringIO]]]:
    """A logger of the test's own, writing through a handler with the context filter, as
    runtime.configure_logging sets it up."""
    handler = logging.StreamHandler(io.StringIO())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger(f"test.logs.{uuid4().hex}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, handler
    logger.removeHandler(handler)


def lines(handler: logging.StreamHandler[io.StringIO]) -> list[str]:
    return handler.stream.getvalue().splitlines()


def placed(correlation_id: str | None = "req-1") -> OrderPlaced:
    return OrderPlaced(
        order_id=uuid4(),
        customer_id="C1",
        email="c1@example.com",
        items=(OrderLine(sku="TSHIRT-BLK-M", qty=1, unit_price=Decimal("19.90")),),
        total=Decimal("19.90"),
        correlation_id=correlation_id,
    )


def test_json_lines_carry_the_service_and_the_ids_of_the_event_being_handled(
    logged: tuple[logging.Logger, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, handler = logged
    handler.setFormatter(JsonFormatter("inventory"))
    event = placed()

    with event_log_context(event):
        logger.info("RESERVED order %s: %s", event.order_id, "TSHIRT-BLK-M x1")
    logger.info("ready: consuming %s", "inventory.order.placed")

    first, second = (json.loads(line) for line in lines(handler))
    assert first == {
        "ts": first["ts"],
        "level": "INFO",
        "service": "inventory",
        "logger": logger.name,
        "msg": f"RESERVED order {event.order_id}: TSHIRT-BLK-M x1",
        "event_id": str(event.event_id),
        "order_id": str(event.order_id),
        "correlation_id": "req-1",
    }
    assert first["ts"].endswith("Z")
    # Outside the context, the line says only what it knows.
    assert second == {
        "ts": second["ts"],
        "level": "INFO",
        "service": "inventory",
        "logger": logger.name,
        "msg": "ready: consuming inventory.order.placed",
    }


def test_a_json_line_stays_one_line_and_carries_the_traceback(
    logged: tuple[logging.Logger, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, handler = logged
    handler.setFormatter(JsonFormatter("payment"))

    try:
        raise ValueError('bad "thing"\non two lines')
    except ValueError:
        logger.exception("handling failed")

    [line] = lines(handler)
    record = json.loads(line)
    assert record["level"] == "ERROR"
    assert record["msg"] == "handling failed"
    assert 'ValueError: bad "thing"\non two lines' in record["exc"]


def test_text_lines_keep_their_layout_and_append_the_known_ids(
    logged: tuple[logging.Logger, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, handler = logged
    handler.setFormatter(TextFormatter("payment"))
    event = placed()

    with event_log_context(event):
        logger.info("COMPLETED payment of %s for order %s", event.total, event.order_id)
    logger.info("stopped")

    with_ids, plain = lines(handler)
    assert f"INFO    payment      {logger.name}: COMPLETED payment of 19.90 for order " in with_ids
    assert with_ids.endswith(
        f"  event_id={event.event_id} order_id={event.order_id} correlation_id=req-1"
    )
    assert plain.endswith(f"INFO    payment      {logger.name}: stopped")


def test_contexts_nest_and_inner_fields_win(
    logged: tuple[logging.Logger, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, handler = logged
    handler.setFormatter(JsonFormatter("api"))
    order_id = uuid4()

    with log_context(correlation_id="outer"):
        with log_context(order_id=order_id):
            logger.info("inner")
        with log_context(correlation_id="inner"):
            logger.info("overridden")
        logger.info("outer")
    logger.info("none")

    inner, overridden, outer, none = (json.loads(line) for line in lines(handler))
    assert (inner["order_id"], inner["correlation_id"]) == (str(order_id), "outer")
    assert overridden["correlation_id"] == "inner"
    assert "order_id" not in outer
    assert outer["correlation_id"] == "outer"
    assert "correlation_id" not in none
    assert current_log_context() == (None, None, None)


async def test_concurrent_tasks_never_see_each_others_context() -> None:
    seen: dict[str, str | None] = {}

    async def work(name: str) -> None:
        with log_context(correlation_id=name):
            await asyncio.sleep(0)
            seen[name] = current_log_context().correlation_id

    await asyncio.gather(work("a"), work("b"))

    assert seen == {"a": "a", "b": "b"}


def test_a_record_that_skipped_the_filter_is_formatted_without_ids() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)

    assert json.loads(JsonFormatter("api").format(record))["msg"] == "hello you"
    assert TextFormatter("api").format(record).endswith("INFO    api          x: hello you")


@pytest.mark.parametrize(
    ("setting", "terminal", "resolved"),
    [
        ("auto", True, "text"),
        ("auto", False, "json"),
        ("json", True, "json"),
        ("text", False, "text"),
    ],
)
def test_auto_means_text_on_a_terminal_and_json_anywhere_else(
    setting: str, terminal: bool, resolved: str
) -> None:
    assert resolve_log_format(setting, terminal) == resolved  # type: ignore[arg-type]


def test_a_service_logs_json_lines_to_stderr_with_its_context(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    order_id = uuid4()
    try:
        configure_logging("inventory", "INFO", "json")
        with log_context(order_id=order_id, correlation_id="abc-123"):
            logging.getLogger("acme_orders.test").info("RESERVED order %s", order_id)
    finally:
        # Give pytest its own handlers back.
        root.handlers[:] = handlers
        root.setLevel(level)

    line = json.loads(capsys.readouterr().err)
    assert (line["service"], line["logger"], line["msg"]) == (
        "inventory",
        "acme_orders.test",
        f"RESERVED order {order_id}",
    )
    assert (line["order_id"], line["correlation_id"]) == (str(order_id), "abc-123")


@pytest.mark.parametrize(("value", "read"), [("JSON", "json"), ("Text", "text"), ("auto", "auto")])
def test_log_format_is_read_in_any_case(
    monkeypatch: pytest.MonkeyPatch, value: str, read: str
) -> None:
    monkeypatch.setenv("LOG_FORMAT", value)

    assert Settings().log_format == read


def test_an_unknown_log_format_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_FORMAT", "xml")

    with pytest.raises(ValidationError, match="log_format"):
        Settings()


@pytest.mark.parametrize(("value", "read"), [("", None), ("http://otel:4318", "http://otel:4318")])
def test_tracing_is_on_only_with_an_otlp_endpoint(
    monkeypatch: pytest.MonkeyPatch, value: str, read: str | None
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", value)

    assert Settings().otel_exporter_otlp_endpoint == read


def test_ids_of_any_uuid_type_are_written(
    logged: tuple[logging.Logger, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, handler = logged
    handler.setFormatter(JsonFormatter("api"))
    # What asyncpg returns for a uuid column (the API logs the id of the order it read back).
    order_id = pgproto.UUID(str(uuid4()))

    with log_context(order_id=order_id):
        logger.info("order %s placed", order_id)

    [line] = lines(handler)
    assert json.loads(line)["order_id"] == str(order_id)
