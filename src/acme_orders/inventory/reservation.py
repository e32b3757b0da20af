"""The reservation rule, as a pure decision: given the stock on hand and a batch of orders in
delivery order, which orders get every line they want and which none, and the stock that is left.

No database, no events, no logs: the handler (stock.py) locks the rows, reads the stock, calls this
and writes down what it decided.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True, slots=True)
class WantedOrder:
    order_id: UUID
    # SKU -> quantity, each SKU once.
    wanted: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Shortage:
    sku: str
    requested: int
    available: int


@dataclass(frozen=True, slots=True)
class Decision:
    """An order reserved whole (`shortages` empty), or not at all (what it lacked, and how much
    of it there was when its turn came)."""

    order_id: UUID
    shortages: tuple[Shortage, ...] = ()

    @property
    def reserved(self) -> bool:
        return not self.shortages


def decide_reservations(
    stock: Mapping[str, int], orders: Sequence[WantedOrder]
) -> tuple[list[Decision], dict[str, int]]:
    """Each order in turn takes all its lines from what the ones before it left, or takes nothing
    if any line is short. Returns the decisions, in the orders' order, and the stock left (a SKU
    the stock does not know has none)."""
    left = dict(stock)
    decisions = []
    for order in orders:
        shortages = tuple(
            Shortage(sku, qty, left.get(sku, 0))
            for sku, qty in order.wanted.items()
            if left.get(sku, 0) < qty
        )
        if not shortages:
            for sku, qty in order.wanted.items():
                left[sku] -= qty
        decisions.append(Decision(order.order_id, shortages))
    return decisions, left
