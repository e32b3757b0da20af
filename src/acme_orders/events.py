"""The event contracts: every event the system publishes, defined once.

Each event is a frozen model whose JSON is the message body (the envelope fields `event_id`,
`event_type`, `occurred_at`, `order_id` and `version`, then the event's data), published on the
topic exchange `acme.events` with the routing key beside the model. The README's event catalogue
is checked against this module by a test.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, ClassVar, Literal
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

EXCHANGE = "acme.events"

# Every field is bounded, so that a message nobody should have sent (a bug, a hostile publisher)
# is refused by validation, and parked in the dead-letter queue, before it reaches the database.
# The API accepts orders within the same bounds (order_api/schemas.py imports them from here).
MAX_QTY = 1000
MAX_LINES = 50

Quantity = Annotated[int, Field(gt=0, le=MAX_QTY)]
Money = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=2)]
Sku = Annotated[str, Field(min_length=1, max_length=64)]


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

    event_id: UUID = Field(default_factory=uuid4)
    event_type: str
    occurred_at: AwareDatetime = Field(default_factory=_now)
    order_id: UUID
    version: Literal[1] = 1


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


class InventoryReleased(Event):
    """The stock reserved for an order whose payment failed is back on the shelf."""

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


EVENT_TYPES: tuple[type[Event], ...] = (
    OrderPlaced,
    InventoryReserved,
    OrderOutOfStock,
    InventoryReleased,
    PaymentCompleted,
    PaymentFailed,
)
EVENT_TYPE_BY_NAME: dict[str, type[Event]] = {
    cls.model_fields["event_type"].default: cls for cls in EVENT_TYPES
}
