"""Traces across the pipeline with OpenTelemetry: the API's request, the publisher publishing each
of the order's events, and each consumer handling each of them, as one trace per order.

The trace context crosses two hops that OpenTelemetry cannot see by itself. The outbox: each row
stores the W3C trace context (`traceparent`, `tracestate`) of the span that wrote it, in
`event_outbox.trace_context`, and the publisher's span for the row is its child. The broker: the
publisher puts its span's context into the AMQP headers of the message, and the consumer's span
for the event is the child of that.

Tracing is on only when OTEL_EXPORTER_OTLP_ENDPOINT is set. When it is not, no SDK tracer is
installed, and every function here returns at once on a module flag: no span, no context, no
header is made, so the pipeline pays nothing for it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

import orjson
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from acme_orders import __version__
from acme_orders.core.events import EXCHANGE, Event
from acme_orders.core.settings import Settings

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage
    from opentelemetry.sdk.trace import TracerProvider


logger = logging.getLogger(__name__)

# What a trace context travels in: W3C headers by name (traceparent, tracestate), as the
# configured propagator writes them.
Carrier = dict[str, str]


class PublishedRow(Protocol):
    """What publishing reads of an outbox row (core.outbox.OutboxRow)."""

    @property
    def event_id(self) -> UUID: ...
    @property
    def event_type(self) -> str: ...
    @property
    def routing_key(self) -> str: ...
    @property
    def trace_context(self) -> Carrier | None: ...


# None: not tracing. Read on every hot path, so that tracing off costs one comparison.
_tracer: Tracer | None = None


def configure_tracing(service: str, settings: Settings) -> None:
    """Export this process's spans over OTLP (http/protobuf) when OTEL_EXPORTER_OTLP_ENDPOINT is
    set; otherwise leave OpenTelemetry's no-op default in place."""
    if settings.otel_exporter_otlp_endpoint is None:
        return
    # Imported here: a process that does not trace never loads the SDK and the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    # The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (adding /v1/traces) and the other standard
    # OTEL_EXPORTER_OTLP_* variables itself. Batched: spans leave in a background thread, never
    # on the path of an order. The provider flushes them at exit.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    use_tracer_provider(provider)
    logger.info("tracing: spans exported over OTLP to %s", settings.otel_exporter_otlp_endpoint)


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Trace with this provider from now on; None stops tracing. configure_tracing calls it, and
    tests give it a provider with an in-memory exporter."""
    global _tracer
    _tracer = provider.get_tracer("acme_orders", __version__) if provider is not None else None


def is_enabled() -> bool:
    return _tracer is not None


def _inject(context: Context | None = None) -> Carrier:
    carrier: Carrier = {}
    propagate.inject(carrier, context=context)
    return carrier


def _stored(carrier: Carrier) -> str | None:
    # A context without a valid span (none, or a no-op one) injects nothing.
    return orjson.dumps(carrier).decode() if carrier else None


def current_trace_context() -> str | None:
    """The trace context to store with an event written now (the outbox's trace_context, as
    JSON), so that its publishing continues the current trace; None when not tracing."""
    if _tracer is None:
        return None
    return _stored(_inject())


def _carrier_from_amqp(headers: Mapping[str, Any] | None) -> Carrier:
    """The propagator's fields of a message's headers. AMQP may hand a header back as bytes, which
    OpenTelemetry's default getter would take for a list of values."""
    carrier: Carrier = {}
    if not headers:
        return carrier
    for field in propagate.get_global_textmap().fields:
        value = headers.get(field)
        if isinstance(value, bytes):
            value = value.decode("ascii", errors="replace")
        if isinstance(value, str):
            carrier[field] = value
    return carrier


def _end(spans: Sequence[Span], error: BaseException | None) -> None:
    for span in spans:
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()


@contextmanager
def publishing(rows: Sequence[PublishedRow]) -> Iterator[list[Carrier | None]]:
    """The trace headers of each row's message, for a batch the publisher is publishing.

    Tracing: a producer span per row, child of the context stored with the row, ended when the
    block ends (after the broker confirmed, or failed, the batch); the headers carry each span's
    context. Not tracing: the stored context, passed on as it is, so that a trace still reaches
    the consumers through a publisher that does not trace."""
    tracer = _tracer
    if tracer is None:
        yield [row.trace_context for row in rows]
        return
    spans = [
        tracer.start_span(
            f"publish {row.routing_key}",
            # An empty Context, not the current one: a row without a stored context starts a
            # trace of its own.
            context=propagate.extract(row.trace_context or {}, context=Context()),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": EXCHANGE,
                "messaging.rabbitmq.destination.routing_key": row.routing_key,
                "messaging.message.id": str(row.event_id),
                "acme.event_type": row.event_type,
            },
        )
        for row in rows
    ]
    try:
        yield [_inject(trace.set_span_in_context(span)) for span in spans]
    except BaseException as error:
        _end(spans, error)
        raise
    _end(spans, None)


class _Received(Protocol):
    """A message and the event decoded from it (consumer.Delivery)."""

    @property
    def message(self) -> AbstractIncomingMessage: ...

    @property
    def event(self) -> Event: ...


class HandlingSpans:
    """The consumer spans of a batch being handled, one per event."""

    __slots__ = ("spans",)

    def __init__(self, spans: dict[UUID, Span]) -> None:
        self.spans = spans

    def trace_contexts(self, emitted: Sequence[Event]) -> list[str | None] | None:
        """For each event emitted by the batch, the trace context to store with it: that of the
        span of the event that caused it (its causation_id). None when not tracing."""
        if not self.spans:
            return None
        contexts: list[str | None] = []
        for effect in emitted:
            span = self.spans.get(effect.causation_id) if effect.causation_id else None
            contexts.append(
                _stored(_inject(trace.set_span_in_context(span))) if span is not None else None
            )
        return contexts


_NOT_TRACING = HandlingSpans({})


@asynccontextmanager
async def handling(queue: str, deliveries: Sequence[_Received]) -> AsyncIterator[HandlingSpans]:
    """A consumer span per event of a batch, each the child of the publisher's span whose context
    came in the message's headers, ended when the block ends (the batch's transaction committed,
    or failed). The batch shares one transaction, so the spans of its events overlap: each
    covers the whole batch's work, not its event's share of it. Asynchronous only so that it
    can share the consumer's `async with` line with the transaction."""
    tracer = _tracer
    if tracer is None:
        yield _NOT_TRACING
        return
    spans: dict[UUID, Span] = {}
    for delivery in deliveries:
        event, message = delivery.event, delivery.message
        if event.event_id in spans:
            continue  # the same event twice in a batch is handled once
        spans[event.event_id] = tracer.start_span(
            f"process {queue}",
            context=propagate.extract(_carrier_from_amqp(message.headers), context=Context()),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": EXCHANGE,
                "messaging.consumer.group.name": queue,
                "messaging.rabbitmq.destination.routing_key": message.routing_key or "",
                "messaging.message.id": str(event.event_id),
                "acme.event_type": event.event_type,
                "acme.order_id": str(event.order_id),
                "acme.correlation_id": event.correlation_id or "",
            },
        )
    try:
        yield HandlingSpans(spans)
    except BaseException as error:
        _end(list(spans.values()), error)
        raise
    _end(list(spans.values()), None)


@contextmanager
def serving(method: str, headers: Sequence[tuple[bytes, bytes]]) -> Iterator[Span]:
    """The server span of an HTTP request, current while the request is handled (so that the
    outbox row of an order placed stores it), child of the caller's trace context if the request
    carries one. Only call it when tracing."""
    assert _tracer is not None
    wanted = propagate.get_global_textmap().fields
    carrier: Carrier = {}
    for raw_name, raw_value in headers:
        # ASGI gives header names in lower case, as the W3C fields are.
        name = raw_name.decode("latin-1")
        if name in wanted:
            carrier[name] = raw_value.decode("latin-1")
    with _tracer.start_as_current_span(
        method,
        context=propagate.extract(carrier, context=Context()),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method},
    ) as span:
        yield span
