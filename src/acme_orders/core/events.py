"""The event contracts: every event the system publishes, defined once.

Each event is a frozen model whose JSON is the message body (the envelope fields `event_id`,
`event_type`, `occurred_at`, `order_id`, `version`, `correlation_id` and `causation_id`, then the
event's data), published on the topic exchange `acme.events` with the routing key beside the
model. The README's event catalogue is checked against this module by a test.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, ClassVar, Literal, TypeVar
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from acme_orders.core.ids import new_id

EXCHANGE = "acme.events"

# Every field is bounded, so that a message nobody should have sent (a bug, a hostile publisher)
# is refused by validation, and parked in the dead-letter queue, before it reaches the database.
# The API accepts orders within the same bounds (order_api/schemas.py imports them from here).
MAX_QTY = 1000
MAX_LINES = 50

Quantity = Annotated[int, Field(gt=0, le=MAX_QTY)]
Money = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=2)]
Sku = Annotated[str, Field(min_length=1, max_length=64)]
# A correlation id is written into every log line about its order, so it is a plain token: no
# spaces or line breaks to forge a log line with, no "@" to smuggle an address in. The API takes a
# client's X-Request-ID as the correlation id only if it fits.
CORRELATION_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
CorrelationId = Annotated[str, Field(min_length=1, max_length=128, pattern=CORRELATION_ID_PATTERN)]


def _now() -> datetime:
    return datetime.now(UTC)


class OrderLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    sku: Sku
    qty: Quantity
    unit_price: Money


class StockLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    sku: Sku
    qty: Quantity


class StockShortage(BaseModel):
    model_config = ConfigDict(frozen=True)

    sku: Sku
    requested: Quantity
    available: Annotated[int, Field(ge=0, lt=2**31)]


class Event(BaseModel):
    """The envelope every event shares."""

    # Readers tolerate fields they do not know, so a producer may add data without a new version.
    model_config = ConfigDict(frozen=True, extra="ignore")

    routing_key: ClassVar[str]

    event_id: UUID = Field(default_factory=new_id)
    event_type: str
    occurred_at: AwareDatetime = Field(default_factory=_now)
    order_id: UUID
    version: Literal[1] = 1
    # Where the event comes from: the request that placed its order (the API's request id, which
    # every later event of the order carries on), and the event whose handling produced it (None
    # for OrderPlaced). Optional, so version 1 stays: events written before these fields existed
    # still validate, and readers that do not know them ignore them.
    correlation_id: CorrelationId | None = None
    causation_id: UUID | None = None


class CustomerEvent(Event):
    """An event that carries who to tell about the order, so no reader has to look it up."""

    customer_id: Annotated[str, Field(min_length=1, max_length=64)]
    # Not validated as an address: once the customer is forgotten it is a placeholder.
    email: Annotated[str, Field(min_length=1, max_length=254)]


class OrderPlaced(CustomerEvent):
    """An order was accepted by the API and waits for stock."""

    routing_key: ClassVar[str] = "order.placed"
    event_type: Literal["OrderPlaced"] = "OrderPlaced"
    items: Annotated[tuple[OrderLine, ...], Field(min_length=1, max_length=MAX_LINES)]
    total: Money


class InventoryReserved(CustomerEvent):
    """Every line of the order is reserved; the order can be charged."""

    routing_key: ClassVar[str] = "inventory.reserved"
    event_type: Literal["InventoryReserved"] = "InventoryReserved"
    items: Annotated[tuple[OrderLine, ...], Field(min_length=1, max_length=MAX_LINES)]
    total: Money


class OrderOutOfStock(CustomerEvent):
    """At least one line could not be reserved, so nothing was."""

    routing_key: ClassVar[str] = "order.out_of_stock"
    event_type: Literal["OrderOutOfStock"] = "OrderOutOfStock"
    shortages: Annotated[tuple[StockShortage, ...], Field(min_length=1, max_length=MAX_LINES)]


class OrderCancelled(CustomerEvent):
    """The order was cancelled before it was final: by its key's client, by an operator, or by
    the system once it was not final ORDER_TIMEOUT seconds after it was placed. Whatever stock it
    held is to be released, and it is never charged."""

    routing_key: ClassVar[str] = "order.cancelled"
    event_type: Literal["OrderCancelled"] = "OrderCancelled"
    # Who cancelled: "requested" (POST /orders/{id}/cancel), "operator" (`acme-orders cancel`) or
    # "timed_out" (ORDER_TIMEOUT). A plain string, so that a new reason needs no new version.
    reason: Annotated[str, Field(min_length=1, max_length=64)]


class InventoryReleased(Event):
    """The stock reserved for an order whose payment failed, or that was cancelled, is back on
    the shelf."""

    routing_key: ClassVar[str] = "inventory.released"
    event_type: Literal["InventoryReleased"] = "InventoryReleased"
    items: Annotated[tuple[StockLine, ...], Field(min_length=1, max_length=MAX_LINES)]


class PaymentCompleted(CustomerEvent):
    """The order was charged."""

    routing_key: ClassVar[str] = "payment.completed"
    event_type: Literal["PaymentCompleted"] = "PaymentCompleted"
    amount: Money
    payment_id: UUID


class PaymentFailed(CustomerEvent):
    """The charge was declined; the reserved stock is to be released."""

    routing_key: ClassVar[str] = "payment.failed"
    event_type: Literal["PaymentFailed"] = "PaymentFailed"
    amount: Money
    reason: Annotated[str, Field(max_length=1000)]


AnyEvent = TypeVar("AnyEvent", bound=Event)


def caused_by(cause: Event, effect: AnyEvent) -> AnyEvent:
    """`effect`, marked as produced by handling `cause`: it carries on the cause's correlation id
    and names the cause as its causation. A cause older than correlation ids starts one: its own
    event id."""
    return effect.model_copy(
        update={
            "correlation_id": cause.correlation_id or str(cause.event_id),
            "causation_id": cause.event_id,
        }
    )


EVENT_TYPES: tuple[type[Event], ...] = (
    OrderPlaced,
    InventoryReserved,
    OrderOutOfStock,
    InventoryReleased,
    PaymentCompleted,
    PaymentFailed,
    OrderCancelled,
)
EVENT_TYPE_BY_NAME: dict[str, type[Event]] = {
    cls.model_fields["event_type"].default: cls for cls in EVENT_TYPES
}
