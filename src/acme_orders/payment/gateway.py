"""The card gateway payment charges orders through: the interface a real gateway implements, the
idempotency key of each charge, and the simulation that stands in for a gateway.

A charge is made inside the payment's transaction, before its commit. Whatever makes that
transaction roll back after the gateway said yes (the process dying, the database going away, a
batch that failed and is handled again one event at a time) brings the same event back to the
gateway: redelivered by RabbitMQ, retried in place, or replayed from the dead-letter queue. Each
time it carries the same idempotency key, so a real gateway answers with the charge it already
made instead of making another.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol
from uuid import UUID, uuid5

from acme_orders.core.consumer import DependencyUnavailableError

logger = logging.getLogger(__name__)

# Fixed for good: payment ids are derived from it, and must not change with a new version.
PAYMENT_ID_NAMESPACE = UUID("20f9cd99-3034-4308-9f77-9124d48abc11")


def charge_idempotency_key(order_id: UUID) -> str:
    """The idempotency key of the charge of an order: the same for every event that asks for it.

    Derived from the order, not from the event (InventoryReserved's event_id): what must happen
    at most once is the charge of an order, however it is asked for. A redelivery and a replay
    from the dead-letter queue carry the same event, so either would do for them; but a second
    InventoryReserved of the same order (published again by hand, or by a future bug) would have
    an event id of its own, and the gateway would take it for a second charge. An order is charged
    once in this system (a declined order ends payment_failed); charging it again after a decline,
    with another card, would need a key per attempt: this one with the attempt's number."""
    return f"order-{order_id}-charge"


def payment_id_for(idempotency_key: str) -> UUID:
    """The id of the payment (PaymentCompleted.payment_id) that a charge with this key records:
    the same for every attempt at it, as the charge is."""
    return uuid5(PAYMENT_ID_NAMESPACE, idempotency_key)


@dataclass(frozen=True, slots=True)
class Charge:
    """What the gateway is asked to charge. `idempotency_key` goes to the gateway with the
    request (Stripe and Adyen: the `Idempotency-Key` header)."""

    idempotency_key: str
    order_id: UUID
    customer_id: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """The gateway's answer: approved, or declined with its reason; `reference` is the gateway's
    own id of the charge, for reconciling with its records."""

    approved: bool
    reference: str
    decline_reason: str | None = None


class GatewayUnavailableError(DependencyUnavailableError):
    """The gateway did not answer (a timeout, a connection refused, a 5xx): the charge may or may
    not have been made. The payment consumer retries the batch in place, with the same keys,
    until the gateway answers; an outage never sends an order to the dead-letter queue."""


class PaymentGateway(Protocol):
    """A card gateway. `name` is recorded with each payment (payments.gateway)."""

    @property
    def name(self) -> str: ...

    async def charge(self, charge: Charge) -> ChargeResult:
        """Charge the amount, once per idempotency key: a key the gateway has seen gets the
        answer it got the first time, with the same reference. Raises GatewayUnavailableError
        when the gateway gave no answer."""
        ...


class SimulatedGateway:
    """A gateway that approves a charge with probability `success_rate`. The answer is drawn
    from the idempotency key, so the same key always gets the same answer and the same
    reference, in any process and after a restart, as a real gateway replays its first answer."""

    name = "simulated"

    def __init__(self, success_rate: float, latency: float = 0.0) -> None:
        self.success_rate = success_rate
        # Seconds each charge takes, as a real gateway's round trip would.
        self.latency = latency

    async def charge(self, charge: Charge) -> ChargeResult:
        if self.latency:
            await asyncio.sleep(self.latency)
        # Seeded with the key (a str seeds from its SHA-512, not from hash()), so the draw is the
        # same in every process.
        approved = random.Random(charge.idempotency_key).random() < self.success_rate
        logger.info(
            "simulated gateway: %s %s for order %s (idempotency key %s)",
            "approved" if approved else "declined",
            charge.amount,
            charge.order_id,
            charge.idempotency_key,
        )
        return ChargeResult(
            approved=approved,
            reference=f"sim_{uuid5(PAYMENT_ID_NAMESPACE, 'sim:' + charge.idempotency_key).hex}",
            decline_reason=None if approved else "card declined",
        )
