"""Log lines that say which order, event and request they are about.

Code says what it is working on with `log_context(...)` (or `event_log_context(event)`) around the
work; a filter on the service's log handler copies that context onto every record logged inside
it, and the formatter writes it out: one JSON object per line for machines, or readable text with
the same fields appended for a person at a terminal. So `grep <order id>` over the logs of every
service finds each line about that order, and `correlation_id` ties them to the request that
placed it.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, Literal, NamedTuple
from uuid import UUID

import orjson

from acme_orders.core.events import Event

LogFormat = Literal["auto", "json", "text"]
# The fields a log line can carry beside its message, in the order they are written.
CONTEXT_FIELDS: Final = ("event_id", "order_id", "correlation_id")


class LogContext(NamedTuple):
    """What the code running now is about; None where it is not known. A tuple: cheap to make for
    every event of a batch, and immutable, so a context can never leak a change into another."""

    event_id: UUID | None = None
    order_id: UUID | None = None
    correlation_id: str | None = None


_NOTHING: Final = LogContext()
_current: ContextVar[LogContext] = ContextVar("acme_log_context", default=_NOTHING)


class _Scope:
    """The context manager of log_context: the fields given, on top of the current ones."""

    __slots__ = ("_fields", "_token")

    def __init__(self, fields: LogContext) -> None:
        self._fields = fields
        self._token: Token[LogContext] | None = None

    def __enter__(self) -> LogContext:
        outer = _current.get()
        given = self._fields
        context = LogContext(
            given.event_id if given.event_id is not None else outer.event_id,
            given.order_id if given.order_id is not None else outer.order_id,
            given.correlation_id if given.correlation_id is not None else outer.correlation_id,
        )
        self._token = _current.set(context)
        return context

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._token is not None
        _current.reset(self._token)
        self._token = None


def log_context(
    *,
    event_id: UUID | None = None,
    order_id: UUID | None = None,
    correlation_id: str | None = None,
) -> _Scope:
    """Every line logged inside `with log_context(...)` carries these fields (and those of any
    enclosing context that are not given here). Contextvars, so concurrent tasks never see each
    other's fields."""
    return _Scope(LogContext(event_id, order_id, correlation_id))


def event_log_context(event: Event) -> _Scope:
    """The context of handling one event: its id, its order and its correlation id."""
    return _Scope(LogContext(event.event_id, event.order_id, event.correlation_id))


def current_log_context() -> LogContext:
    return _current.get()


class ContextFilter(logging.Filter):
    """Copies the current log context onto each record the handler is about to write. On the
    handler, not a logger: it then runs only for lines that are written, below the level none."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        if context is not _NOTHING:
            record.event_id, record.order_id, record.correlation_id = context
        return True


def _context_fields(record: logging.LogRecord) -> list[tuple[str, object]]:
    """The record's known context fields, by name. A record that did not pass through
    ContextFilter (one of another handler, or of a test's) has none."""
    return [
        (name, value)
        for name in CONTEXT_FIELDS
        if (value := getattr(record, name, None)) is not None
    ]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, service, logger, msg, then event_id, order_id and
    correlation_id when known, and exc (the traceback) when there is one."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            # orjson writes datetimes and UUIDs itself, faster than str() would.
            "ts": datetime.fromtimestamp(record.created, UTC),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # Unrolled: this runs for every line a service writes.
        if (event_id := getattr(record, "event_id", None)) is not None:
            line["event_id"] = event_id
        if (order_id := getattr(record, "order_id", None)) is not None:
            line["order_id"] = order_id
        if (correlation_id := getattr(record, "correlation_id", None)) is not None:
            line["correlation_id"] = correlation_id
        # Cached on the record, as logging.Formatter does, for any other handler.
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: anything orjson does not write itself (asyncpg's own UUID type, say) is
        # written as its str(), so a log line never fails for the type of an id.
        return orjson.dumps(line, default=str, option=orjson.OPT_UTC_Z).decode()


class TextFormatter(logging.Formatter):
    """The readable line a person watches on a terminal: time, level, service, logger and
    message, then the known context fields as `name=value`."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)-7s {service:<12} %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        text = super().formatMessage(record)
        fields = _context_fields(record)
        if not fields:
            return text
        return f"{text}  " + " ".join(f"{name}={value}" for name, value in fields)


def log_formatter(service: str, log_format: Literal["json", "text"]) -> logging.Formatter:
    return JsonFormatter(service) if log_format == "json" else TextFormatter(service)


def resolve_log_format(
    log_format: LogFormat, stream_is_a_terminal: bool
) -> Literal["json", "text"]:
    """`auto`: text for a person at a terminal, JSON for anything else (a file, a pipe, a log
    collector)."""
    if log_format == "auto":
        return "text" if stream_is_a_terminal else "json"
    return log_format
