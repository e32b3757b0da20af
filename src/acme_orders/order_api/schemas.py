"""What the API accepts and returns."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from acme_orders.core.events import MAX_LINES, MAX_QTY
from acme_orders.core.orders import OrderStatus
from acme_orders.order_api.paging import FIRST_PAGE, Position, position_of

# Bounds that keep a request sane and every value inside its column; the events the order becomes
# are held to the same ones.
MAX_QTY_PER_LINE = MAX_QTY

Sku = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^\S+$")
]
CustomerId = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$"
    ),
]


class OrderLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: Sku
    # strict: 2.0, "2" and true are not quantities.
    qty: Annotated[int, Field(strict=True, ge=1, le=MAX_QTY_PER_LINE)]


class PlaceOrder(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "C100",
                    "email": "c100@example.com",
                    "items": [{"sku": "TSHIRT-BLK-M", "qty": 1}],
                }
            ]
        },
    )

    customer_id: CustomerId
    email: Annotated[EmailStr, Field(max_length=254)]
    items: Annotated[list[OrderLineIn], Field(min_length=1, max_length=MAX_LINES)]

    @model_validator(mode="after")
    def one_line_per_sku(self) -> PlaceOrder:
        seen: set[str] = set()
        for line in self.items:
            if line.sku in seen:
                raise ValueError(
                    f"sku {line.sku} appears twice; put its whole quantity on one line"
                )
            seen.add(line.sku)
        return self


class OrderQuery(BaseModel):
    """The query of GET /orders. A parameter it does not know is refused (422), not ignored: a
    misspelt filter must not quietly return every order."""

    model_config = ConfigDict(extra="forbid")

    # Text a customer id can be (no control characters, which PostgreSQL refuses in a string).
    customer_id: Annotated[str | None, Field(max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")] = None
    status: OrderStatus | None = None
    limit: Annotated[int, Field(ge=1, le=200, description="Most orders on the page.")] = 50
    cursor: Annotated[
        str | None,
        Field(
            description=(
                "Where the page starts: the `next_cursor` of the page before, as it is. Without "
                "it, the newest orders."
            )
        ),
    ] = None

    @model_validator(mode="before")
    @classmethod
    def no_offset(cls, query: Any) -> Any:
        # `offset` paged the list before the cursor did: tell a client that still sends it what
        # to send instead, rather than only that the parameter is unknown.
        if isinstance(query, dict) and "offset" in query:
            raise ValueError(
                "offset is no longer supported: the list pages with a cursor; pass the "
                "next_cursor of a page as `cursor` to get the next one"
            )
        return query

    @field_validator("cursor")
    @classmethod
    def a_cursor_this_api_gave_out(cls, cursor: str | None) -> str | None:
        if cursor is not None:
            position_of(cursor)
        return cursor

    @property
    def after(self) -> Position:
        """Where the page starts: after the order the cursor names, or before every order."""
        return FIRST_PAGE if self.cursor is None else position_of(self.cursor)


class OrderLineOut(BaseModel):
    sku: str
    qty: int
    unit_price: Decimal
    line_total: Decimal


class OrderOut(BaseModel):
    id: UUID
    customer_id: str
    email: str
    status: OrderStatus
    items: list[OrderLineOut]
    total: Decimal
    created_at: datetime
    updated_at: datetime


class OrderPage(BaseModel):
    items: list[OrderOut] = Field(description="Newest first.")
    limit: int
    next_cursor: str | None = Field(
        description=(
            "Pass it as `cursor` for the next page, the orders older than this one's; null on the "
            "last page. Orders placed meanwhile do not shift the pages: they come before the "
            "first one."
        )
    )


class ProductOut(BaseModel):
    sku: str
    name: str
    price: Decimal
    stock_qty: int


class Health(BaseModel):
    status: str
    database: str


class Problem(BaseModel):
    """Every error answer of the API."""

    detail: str | list[dict[str, Any]] = Field(
        description=(
            "What is wrong: a sentence, or for a request that does not fit the schema, one entry "
            "per problem (`loc`, `msg`, `type`)."
        )
    )


class EventHandling(BaseModel):
    """A service that consumes the event: when it handled it, if it has."""

    service: str
    queue: str | None = Field(
        description="The queue it reads the event from; null for a service that handled the "
        "event although none of its queues is bound to the routing key any more."
    )
    processed_at: datetime | None = Field(
        description="When its transaction recorded the event (processed_events); null: not yet."
    )
    received_at: datetime | None = Field(
        None,
        description="When the service took the batch that handled the event; null: not handled "
        "yet, or handled before the service recorded it (unknown).",
    )
    broker_seconds: float | None = Field(
        None,
        description="Seconds from published_at until the service took the event (in the queue "
        "and in its prefetch); null: unknown or not yet.",
    )
    handling_seconds: float | None = Field(
        None,
        description="Seconds from taking the event until its transaction recorded it "
        "(processed_at), retries in place included; null: unknown or not yet.",
    )


class OrderEventOut(BaseModel):
    """One event of an order, from the outbox."""

    event_id: UUID
    event_type: str
    routing_key: str
    emitted_by: str | None = Field(
        description="The service that emitted it (wrote it to the outbox); null for an event "
        "type this version does not know."
    )
    occurred_at: datetime = Field(description="When it happened, by its emitter's clock.")
    recorded_at: datetime = Field(description="When its outbox row was written.")
    published_at: datetime | None = Field(
        description="When the publisher recorded the broker's confirm; null while it waits in "
        "the outbox. A consumer may have handled it a moment before."
    )
    outbox_seconds: float | None = Field(
        None,
        description="Seconds it waited in the outbox, recorded_at to published_at; null while "
        "it waits.",
    )
    handled_by: list[EventHandling] = Field(
        description="Each service subscribed to its routing key, and any other that handled it."
    )
    correlation_id: str | None = Field(
        description="The id the order's story carries from the request that placed it, if the "
        "emitter recorded one."
    )
    causation_id: UUID | None = Field(
        description="The event whose handling emitted this one; null for OrderPlaced (and for "
        "events that predate the field)."
    )


class OrderTimeline(BaseModel):
    order_id: UUID
    status: OrderStatus
    placed_at: datetime
    events: list[OrderEventOut] = Field(
        description="In causal order. Empty once the outbox rows were purged (OUTBOX_RETENTION "
        "after publishing)."
    )


class OrderIsFinal(BaseModel):
    """The answer to cancelling an order that has already ended another way."""

    detail: str = Field(description="A sentence saying so.")
    status: OrderStatus = Field(description="The status the order ended with, which it keeps.")
