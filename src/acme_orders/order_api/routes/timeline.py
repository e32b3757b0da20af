"""GET /orders/{id}/events: the order's timeline, for clients, the live board and operators."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, HTTPException, status

from acme_orders.ops.timeline import Timeline, hop_lags, order_timeline
from acme_orders.order_api.deps import Pool, Reader
from acme_orders.order_api.responses import problems
from acme_orders.order_api.schemas import EventHandling, OrderEventOut, OrderTimeline

timeline = APIRouter(prefix="/orders", tags=["orders"])


@timeline.get("/{order_id}/events", responses=problems(401, 403, 404, 422, 429, 503))
async def get_order_events(order_id: UUID, pool: Pool, caller: Reader) -> OrderTimeline:
    """Every event of the order in causal order: its type and routing key, the service that
    emitted it, when it occurred and was published, and when each consuming service handled it,
    with the time it spent in each hop: the outbox, the broker, and the consumer.
    The same rule as GET /orders/{id}: an orders:write key sees only the orders it placed."""
    found = await order_timeline(pool, order_id, only_of=caller.only_orders_of)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"order {order_id} not found")
    return timeline_out(found)


def timeline_out(found: Timeline) -> OrderTimeline:
    return OrderTimeline(
        order_id=found.order_id,
        status=found.status,
        placed_at=found.placed_at,
        events=[
            OrderEventOut(
                event_id=event.event_id,
                event_type=event.event_type,
                routing_key=event.routing_key,
                emitted_by=event.emitted_by,
                occurred_at=event.occurred_at,
                recorded_at=event.recorded_at,
                published_at=event.published_at,
                outbox_seconds=hop_lags(event, None).outbox,
                handled_by=[
                    EventHandling(
                        service=h.service,
                        queue=h.queue,
                        processed_at=h.processed_at,
                        received_at=h.received_at,
                        broker_seconds=hop_lags(event, h).broker,
                        handling_seconds=hop_lags(event, h).handling,
                    )
                    for h in event.handled_by
                ],
                correlation_id=event.correlation_id,
                causation_id=event.causation_id,
            )
            for event in found.events
        ],
    )
