"""Keeping personal data out of places it does not belong, such as logs, and erasing it on
request."""

from __future__ import annotations

import re
from dataclasses import dataclass

from acme_orders.core.database import Connection
from acme_orders.core.orders import FINAL_STATUSES

# Anything that looks like an address, in text that is not meant to hold one.
_ADDRESS = re.compile(r"[^\s@]+@[^\s@]+")


def mask_email(address: str) -> str:
    """``c100@example.com`` -> ``c1***@e***.com``: enough to tell customers apart in a log, not
    enough to write to them, nor to tell which company or mail provider they are with. Only the
    top-level domain stays whole (``.co.uk`` keeps ``.uk``); a domain of one label (``localhost``)
    keeps its first character, like any other."""
    local, at, domain = address.partition("@")
    if not at:
        return "***"
    first_label, dot, other_labels = domain.partition(".")
    top_level = "." + other_labels.rpartition(".")[2] if dot else ""
    return f"{local[:2]}***@{first_label[:1]}***{top_level}"


def mask_emails_in(text: str) -> str:
    """Text to log that is not meant to hold an address but may (a client choosing its customers'
    e-mail addresses as their customer ids, say), with any address in it masked."""
    return _ADDRESS.sub(lambda match: mask_email(match.group()), text) if "@" in text else text


# What replaces an erased e-mail address. The columns are NOT NULL (every order and notification
# had a recipient once), and a fixed word says plainly what happened to it.
FORGOTTEN = "forgotten"


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What `forget_customer` changed, and what it could not yet."""

    orders: int
    notifications: int
    events: int
    # Orders still on their way through the pipeline: events already handed to RabbitMQ carry the
    # address, and a notification may yet be written with it. Forget again once they are final.
    unfinished: int


class ForgetRefusedError(Exception):
    """An erasure asked for through an API key that the key may not ask for; the message says
    why."""


async def forget_customer(
    tx: Connection, customer_id: str, placed_with: str | None = None
) -> Forgotten:
    """Erase the customer's e-mail address from their orders, their notifications and the outbox
    events of their orders, in one transaction; the orders, their lines, amounts and statuses stay
    (the order history). Safe to repeat: only what still holds the address is changed.

    `placed_with`, the name of an API key: the erasure is asked for on that key's behalf (one
    client of the shop forgetting one of its customers), so only the orders that key placed are
    erased, and a customer with none of them is refused. A customer id is the client's own, and
    two clients may have the same id for different people: one never erases the other's."""
    key_id = None
    if placed_with is not None:
        key_id = await tx.fetchval("SELECT id FROM api_keys WHERE name = $1", placed_with)
        if key_id is None:
            raise ForgetRefusedError(
                f"no API key is named {placed_with!r} (see `acme-orders apikey list`)"
            )
    order_ids = [
        r["id"]
        for r in await tx.fetch(
            """
            SELECT id FROM orders
            WHERE customer_id = $1 AND ($2::bigint IS NULL OR api_key_id = $2)
            """,
            customer_id,
            key_id,
        )
    ]
    if placed_with is not None and not order_ids:
        # The same answer whether other keys' orders have this customer or nobody's do: a key
        # learns nothing about other clients' customers.
        raise ForgetRefusedError(
            f"API key {placed_with!r} placed no order for customer {customer_id!r}: a key can "
            "only have its own customers forgotten; nothing was erased"
        )
    orders = await tx.fetchval(
        """
        WITH erased AS (
            UPDATE orders SET email = $2 WHERE id = ANY($1::uuid[]) AND email <> $2 RETURNING 1
        )
        SELECT count(*) FROM erased
        """,
        order_ids,
        FORGOTTEN,
    )
    notifications = await tx.fetchval(
        """
        WITH erased AS (
            UPDATE notifications SET recipient = $2
            WHERE order_id = ANY($1::uuid[]) AND recipient <> $2
            RETURNING 1
        )
        SELECT count(*) FROM erased
        """,
        order_ids,
        FORGOTTEN,
    )
    # Sent rows stay in the outbox for OUTBOX_RETENTION, and a NEW one would carry the address to
    # the next service: both are rewritten. Consumers take `email` as it comes.
    events = await tx.fetchval(
        """
        WITH erased AS (
            UPDATE event_outbox SET payload = jsonb_set(payload, '{email}', to_jsonb($2::text))
            WHERE order_id = ANY($1::uuid[]) AND payload ? 'email' AND payload->>'email' <> $2
            RETURNING 1
        )
        SELECT count(*) FROM erased
        """,
        order_ids,
        FORGOTTEN,
    )
    unfinished = await tx.fetchval(
        "SELECT count(*) FROM orders WHERE id = ANY($1::uuid[]) AND NOT status = ANY($2::text[])",
        order_ids,
        [status.value for status in FINAL_STATUSES],
    )
    return Forgotten(orders, notifications, events, unfinished)
