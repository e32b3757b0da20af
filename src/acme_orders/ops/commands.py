"""The operator's commands of `acme-orders`: migrate, outbox, dlq, apikey, forget, trace, cancel,
stock, audit, broker-definitions, wait-for-schema. Each reads the settings, prints its results on
stdout and its logs on stderr, and, when a server cannot be reached or refuses, prints one line on
stderr and returns 1 (`operate`; `audit` has exit codes of its own). cli.py parses their arguments
and calls them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
from aio_pika.exceptions import AMQPError

from acme_orders.core import database, messaging, topology
from acme_orders.core.cancellation import cancel_orders
from acme_orders.core.orders import CANCELLABLE_STATUSES, CancelReason, OrderStatus
from acme_orders.core.runtime import configure_logging
from acme_orders.core.settings import Settings, get_settings
from acme_orders.ops import (
    api_keys,
    broker_definitions,
    dead_letters,
    housekeeping,
    privacy,
    stock_ledger,
    timeline,
)
from acme_orders.ops import audit as audit_

logger = logging.getLogger(__name__)


def migrate() -> int:
    settings = get_settings()
    configure_logging("migrate", settings.log_level, settings.log_format)

    async def run() -> None:
        applied = await database.migrate(settings)
        logger.info("schema up to date (%s)", ", ".join(applied) or "nothing to apply")
        await messaging.declare_topology(settings, topology.QUEUES)
        logger.info("broker topology declared")

    try:
        asyncio.run(run())
    except Exception as exc:
        logger.error("migrate failed: %s", exc)
        return 1
    return 0


def wait_for_schema(timeout: float | None) -> int:
    """Exit 0 once the schema is what this version needs, 1 after `timeout` seconds without."""
    settings = get_settings()
    configure_logging("wait-for-schema", settings.log_level, settings.log_format)
    try:
        asyncio.run(asyncio.wait_for(database.wait_for_schema(settings), timeout))
    except TimeoutError:
        logger.error("the schema is still not up to date after %.0fs; has migrate run?", timeout)
        return 1
    return 0


# What an operator command reports in one line instead of a traceback: a server that is down,
# refuses us, or lacks what we asked for (a database not migrated, a queue that does not exist).
# A refused TCP connection is an OSError from either client; AMQPError covers RabbitMQ refusing
# the login or the vhost, and closing a channel.
OPERATOR_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    AMQPError,
    dead_letters.UnknownQueueError,
    api_keys.ApiKeyError,
    privacy.ForgetRefusedError,
    stock_ledger.StockAddRefusedError,
)


def operate(
    command: str, server: str, work: Callable[[Settings], Coroutine[Any, Any, None]]
) -> int:
    """Run an operator command: its results go to stdout, logs to stderr, and a failure to reach
    `server` is one line on stderr and exit code 1."""
    settings = get_settings()
    configure_logging(command.split()[0], settings.log_level, settings.log_format)
    # aiormq logs a failed connection at ERROR by itself; ours is the one line that says so.
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    try:
        asyncio.run(work(settings))
    except OPERATOR_ERRORS as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        print(f"acme-orders {command}: {server}: {detail}", file=sys.stderr)
        return 1
    return 0


def human_age(age: timedelta) -> str:
    """2.3s, 4m 12s, 3h, 2d 4h: the two largest units, the second only when it is not zero."""
    seconds = age.total_seconds()
    if seconds < 59.95:  # not "60.0s"
        return f"{seconds:.1f}s"
    whole = round(seconds)
    parts = [
        (whole // 86400, "d"),
        (whole % 86400 // 3600, "h"),
        (whole % 3600 // 60, "m"),
        (whole % 60, "s"),
    ]
    first = next(i for i, (n, _) in enumerate(parts) if n)
    shown = [f"{n}{unit}" for n, unit in parts[first : first + 2] if n]
    return " ".join(shown)


@asynccontextmanager
async def database_pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """What a command needs of the database: one connection, closed on the way out."""
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1, timeout=10)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


def outbox_status() -> int:
    async def work(settings: Settings) -> None:
        async with database_pool(settings) as pool:
            status = await housekeeping.outbox_status(pool)
        counts = ", ".join(f"{name} {n}" for name, n in status.counts.items())
        if status.oldest_new_age is None:
            print(f"{counts}; no NEW rows")
        else:
            age = human_age(status.oldest_new_age)
            print(f"{counts}; oldest NEW: id {status.oldest_new_id}, {age} old")

    return operate("outbox status", "PostgreSQL", work)


def outbox_purge() -> int:
    async def work(settings: Settings) -> None:
        async with database_pool(settings) as pool:
            counts = await housekeeping.purge_all(pool, settings)
        print(
            f"deleted {counts['event_outbox']} SENT outbox rows "
            f"(older than {human_age(settings.outbox_retention)}), "
            f"{counts['processed_events']} processed_events "
            f"(older than {human_age(settings.processed_events_retention)}), "
            f"{counts['idempotency_keys']} idempotency keys "
            f"(older than {human_age(settings.idempotency_key_retention)})"
        )

    return operate("outbox purge", "PostgreSQL", work)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds") if moment else "(time unknown)"


def dlq_list(queue: str | None) -> int:
    async def work(settings: Settings) -> None:
        queues = [queue] if queue else [spec.name for spec in topology.QUEUES]
        letters = await dead_letters.list_dead_letters(settings, queues)
        for letter in letters:
            print(
                f"{letter.queue}  {_when(letter.dead_lettered_at)}  "
                f"message {letter.message_id or '(none)'}  {letter.event_type or '(no type)'}  "
                f"order {letter.order_id or '(none)'}"
            )
            print(f"    reason: {letter.reason}")
        print(_plural(len(letters), "dead letter") if letters else "no dead letters")

    return operate("dlq list", "RabbitMQ", work)


def dlq_replay(queue: str, message_ids: list[str] | None) -> int:
    async def work(settings: Settings) -> None:
        wanted = set(message_ids) if message_ids else None
        moved = await dead_letters.replay_dead_letters(settings, queue, wanted)
        original, dlq = dead_letters.queue_names(queue)
        print(f"{moved} moved from {dlq} back to {original}")
        if wanted is not None and moved < len(wanted):
            print(f"{_plural(len(wanted) - moved, 'message id')} not found in {dlq}")

    return operate("dlq replay", "RabbitMQ", work)


def apikey_create(name: str, scope: str) -> int:
    async def work(settings: Settings) -> None:
        async with database_pool(settings) as pool:
            token = await api_keys.create_key(pool, name, api_keys.Scope(scope))
        # The key alone on stdout, so that a script can take it; it is never shown again.
        print(token)
        print(
            f"created API key {name!r} with scope {scope}; store it now, it is not shown again",
            file=sys.stderr,
        )

    return operate("apikey create", "PostgreSQL", work)


def apikey_list() -> int:
    async def work(settings: Settings) -> None:
        async with database_pool(settings) as pool:
            keys = await api_keys.list_keys(pool)
        width = max((len(key.name) for key in keys), default=0)
        for key in keys:
            state = f"revoked {_when(key.revoked_at)}" if key.revoked_at else "active"
            print(f"{key.name:<{width}}  {key.scope:<12}  created {_when(key.created_at)}  {state}")
        print(_plural(len(keys), "API key") if keys else "no API keys")

    return operate("apikey list", "PostgreSQL", work)


def apikey_revoke(name: str) -> int:
    async def work(settings: Settings) -> None:
        async with database_pool(settings) as pool:
            revocation = await api_keys.revoke_key(pool, name)
        when = _when(revocation.revoked_at)
        if revocation.already:
            print(f"API key {name!r} was already revoked ({when})")
        else:
            print(
                f"revoked API key {name!r} ({when}); the API refuses it within "
                f"{settings.api_key_cache_ttl:g}s"
            )

    return operate("apikey revoke", "PostgreSQL", work)


def forget(customer_id: str, placed_with: str | None = None) -> int:
    async def work(settings: Settings) -> None:
        async with (
            database_pool(settings) as pool,
            pool.acquire() as conn,
            conn.transaction(),
        ):
            done = await privacy.forget_customer(conn, customer_id, placed_with)
        whose = "" if placed_with is None else f" placed with API key {placed_with!r}"
        print(
            f"erased the e-mail address of customer {customer_id!r} from "
            f"{_plural(done.orders, 'order')}{whose}, "
            f"{_plural(done.notifications, 'notification')} "
            f"and {_plural(done.events, 'outbox event')}; the orders themselves are kept"
        )
        if done.unfinished:
            print(
                f"{_plural(done.unfinished, 'order')} of this customer still in progress: run "
                "forget again once they are final",
                file=sys.stderr,
            )

    return operate("forget", "PostgreSQL", work)


def trace(order_id: UUID) -> int:
    found: timeline.Timeline | None = None

    async def work(settings: Settings) -> None:
        nonlocal found
        async with database_pool(settings) as pool:
            found = await timeline.order_timeline(pool, order_id)

    code = operate("trace", "PostgreSQL", work)
    if code:
        return code
    if found is None:
        print(f"acme-orders trace: no order {order_id}", file=sys.stderr)
        return 1
    print(timeline.render_timeline(found))
    return 0


def cancel(order_id: UUID) -> int:
    before: OrderStatus | None = None

    async def work(settings: Settings) -> None:
        nonlocal before
        async with database_pool(settings) as pool, pool.acquire() as conn, conn.transaction():
            statuses = await cancel_orders(conn, [order_id], CancelReason.OPERATOR)
        before = statuses.get(order_id)

    code = operate("cancel", "PostgreSQL", work)
    if code:
        return code
    if before is None:
        print(f"acme-orders cancel: no order {order_id}", file=sys.stderr)
        return 1
    if before is OrderStatus.CANCELLED:
        print(f"order {order_id} was already cancelled; nothing changed")
    elif before in CANCELLABLE_STATUSES:
        print(f"order {order_id} cancelled (it was {before.value}); its stock goes back")
    else:
        print(
            f"acme-orders cancel: order {order_id} is already {before.value}; not cancelled",
            file=sys.stderr,
        )
        return 1
    return 0


def write_broker_definitions(template: Path, output: Path, administrator: str | None) -> int:
    """The definitions of `template` with every user's password (each from its own environment
    variable) hashed in, written to `output` for RabbitMQ to load at boot."""
    definitions = json.loads(template.read_text(encoding="utf-8"))
    users = broker_definitions.users_of(definitions) + ([administrator] if administrator else [])
    passwords = {
        user: password
        for user in users
        if (password := os.environ.get(broker_definitions.password_variable(user)))
    }
    try:
        complete = broker_definitions.with_passwords(definitions, passwords, administrator)
    except broker_definitions.MissingPasswordError as exc:
        print(f"acme-orders broker-definitions: {exc}", file=sys.stderr)
        return 1
    # Written whole or not at all: RabbitMQ may read the file while a new one is being written.
    partial = output.with_name(output.name + ".partial")
    partial.write_text(json.dumps(complete, indent=2) + "\n", encoding="utf-8")
    # Not secret (hashes only), and read by the broker's own user.
    partial.chmod(0o644)
    partial.replace(output)
    vhosts = ", ".join(v["name"] for v in complete["vhosts"])
    print(f"wrote {output}: users {', '.join(users)}; vhosts {vhosts}")
    return 0


def stock_add(sku: str, qty: int) -> int:
    async def work(settings: Settings) -> None:
        async with (
            database_pool(settings) as pool,
            pool.acquire() as conn,
            conn.transaction(),
        ):
            added = await stock_ledger.add_stock(conn, sku, qty)
        print(f"added {added.added} to {added.sku}: stock {added.before} -> {added.after}")

    return operate("stock add", "PostgreSQL", work)


# `acme-orders audit`'s exit codes beyond 0 (clean) and 1 (something is off); argparse takes 2
# for a usage error.
AUDIT_DATABASE_UNAVAILABLE = 3
AUDIT_BROKER_UNAVAILABLE = 4


def audit(as_json: bool, grace: float, stuck_after: float, limit: int) -> int:
    """Check the books: exit 0 when they balance, 1 with what is off, 3 when the database could
    not be checked (unreachable, refused, not migrated), 4 when RabbitMQ could not."""
    settings = get_settings()
    configure_logging("audit", settings.log_level, settings.log_format)
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)

    async def work() -> audit_.Report:
        async with database_pool(settings) as pool:
            return await audit_.audit(
                pool,
                settings,
                grace=timedelta(seconds=grace),
                stuck_after=timedelta(seconds=stuck_after),
                limit=limit,
            )

    try:
        report = asyncio.run(work())
    except audit_.BrokerUnavailableError as exc:
        print(f"acme-orders audit: RabbitMQ: {exc}", file=sys.stderr)
        return AUDIT_BROKER_UNAVAILABLE
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        print(f"acme-orders audit: PostgreSQL: {detail}", file=sys.stderr)
        return AUDIT_DATABASE_UNAVAILABLE
    if as_json:
        print(json.dumps(audit_.report_as_json(report), indent=2))
    else:
        print(audit_.render_report(report))
    return 0 if report.clean else 1
