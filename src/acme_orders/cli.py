"""The `acme-orders` command, and the one place that knows every service."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from uuid import UUID

import asyncpg
from aio_pika.exceptions import AMQPError

from acme_orders.core import database, messaging, topology
from acme_orders.core.runtime import ServiceMain, configure_logging, run_service
from acme_orders.core.settings import Settings, get_settings
from acme_orders.inventory import service as inventory
from acme_orders.notification import service as notification
from acme_orders.ops import (
    api_keys,
    broker_definitions,
    dead_letters,
    housekeeping,
    privacy,
    timeline,
)
from acme_orders.order_api import service as order_api
from acme_orders.payment import service as payment
from acme_orders.publisher import service as publisher

logger = logging.getLogger("acme_orders.cli")

WORKERS: dict[str, ServiceMain] = {
    publisher.SERVICE: publisher.main,
    inventory.SERVICE: inventory.main,
    payment.SERVICE: payment.main,
    notification.SERVICE: notification.main,
}
SERVICES = (order_api.SERVICE, *WORKERS)
# Every consumer queue, from the one list the timeline, the board and asyncapi.yaml read too.
CONSUMER_QUEUES = list(topology.QUEUES)


def migrate() -> int:
    settings = get_settings()
    configure_logging("migrate", settings.log_level, settings.log_format)

    async def run() -> None:
        applied = await database.migrate(settings)
        logger.info("schema up to date (%s)", ", ".join(applied) or "nothing to apply")
        await messaging.declare_topology(settings, CONSUMER_QUEUES)
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


def run(service: str) -> int:
    if service == "all":
        return run_all()
    if service == order_api.SERVICE:
        return order_api.run()
    run_service(service, WORKERS[service])
    return 0


def run_all() -> int:
    """Each service in its own process; SIGINT or SIGTERM stops them all, and so does any one of
    them exiting. Returns 0 only when every service stopped cleanly."""
    settings = get_settings()
    # Five services on one terminal, or through `tee` into one file: a person reads it, so
    # readable text (each line tagged with its service) unless LOG_FORMAT asks for JSON.
    log_format = "text" if settings.log_format == "auto" else settings.log_format
    configure_logging("run-all", settings.log_level, log_format)
    environment = {**os.environ, "LOG_FORMAT": log_format}
    children = {
        name: subprocess.Popen([sys.executable, "-m", "acme_orders", "run", name], env=environment)
        for name in SERVICES
    }
    stopping = False

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        logger.info("%s received; stopping all services", signal.Signals(signum).name)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    logger.info("started %s", ", ".join(f"{n} (pid {p.pid})" for n, p in children.items()))

    exit_code = 0
    while not stopping:
        exited = {name: p.returncode for name, p in children.items() if p.poll() is not None}
        if exited:
            name, exit_code = next(iter(exited.items()))
            logger.error("%s exited with code %s; stopping the others", name, exit_code)
            break
        time.sleep(0.2)

    for child in children.values():
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + settings.shutdown_timeout + 5
    for name, child in children.items():
        try:
            code = child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in time; killing it", name)
            child.kill()
            code = child.wait()
        # uvicorn re-raises the signal once it has shut down gracefully: dying of the signal we
        # sent is a clean stop too.
        if code not in (0, -signal.SIGTERM, -signal.SIGINT):
            logger.warning("%s exited with code %s", name, code)
            exit_code = exit_code or code
    logger.info("all services stopped")
    return exit_code


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


async def _database(settings: Settings) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1, timeout=10)
    assert pool is not None
    return pool


def outbox_status() -> int:
    async def work(settings: Settings) -> None:
        pool = await _database(settings)
        try:
            status = await housekeeping.outbox_status(pool)
        finally:
            await pool.close()
        counts = ", ".join(f"{name} {n}" for name, n in status.counts.items())
        if status.oldest_new_age is None:
            print(f"{counts}; no NEW rows")
        else:
            age = human_age(status.oldest_new_age)
            print(f"{counts}; oldest NEW: id {status.oldest_new_id}, {age} old")

    return operate("outbox status", "PostgreSQL", work)


def outbox_purge() -> int:
    async def work(settings: Settings) -> None:
        pool = await _database(settings)
        try:
            counts = await housekeeping.purge_all(pool, settings)
        finally:
            await pool.close()
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
        queues = [queue] if queue else [spec.name for spec in CONSUMER_QUEUES]
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
        pool = await _database(settings)
        try:
            token = await api_keys.create_key(pool, name, api_keys.Scope(scope))
        finally:
            await pool.close()
        # The key alone on stdout, so that a script can take it; it is never shown again.
        print(token)
        print(
            f"created API key {name!r} with scope {scope}; store it now, it is not shown again",
            file=sys.stderr,
        )

    return operate("apikey create", "PostgreSQL", work)


def apikey_list() -> int:
    async def work(settings: Settings) -> None:
        pool = await _database(settings)
        try:
            keys = await api_keys.list_keys(pool)
        finally:
            await pool.close()
        width = max((len(key.name) for key in keys), default=0)
        for key in keys:
            state = f"revoked {_when(key.revoked_at)}" if key.revoked_at else "active"
            print(f"{key.name:<{width}}  {key.scope:<12}  created {_when(key.created_at)}  {state}")
        print(_plural(len(keys), "API key") if keys else "no API keys")

    return operate("apikey list", "PostgreSQL", work)


def apikey_revoke(name: str) -> int:
    async def work(settings: Settings) -> None:
        pool = await _database(settings)
        try:
            revocation = await api_keys.revoke_key(pool, name)
        finally:
            await pool.close()
        when = _when(revocation.revoked_at)
        if revocation.already:
            print(f"API key {name!r} was already revoked ({when})")
        else:
            print(
                f"revoked API key {name!r} ({when}); the API refuses it within "
                f"{settings.api_key_cache_ttl:g}s"
            )

    return operate("apikey revoke", "PostgreSQL", work)


def forget(customer_id: str) -> int:
    async def work(settings: Settings) -> None:
        pool = await _database(settings)
        try:
            async with pool.acquire() as conn, conn.transaction():
                done = await privacy.forget_customer(conn, customer_id)
        finally:
            await pool.close()
        print(
            f"erased the e-mail address of customer {customer_id!r} from "
            f"{_plural(done.orders, 'order')}, {_plural(done.notifications, 'notification')} "
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
        pool = await _database(settings)
        try:
            found = await timeline.order_timeline(pool, order_id)
        finally:
            await pool.close()

    code = operate("trace", "PostgreSQL", work)
    if code:
        return code
    if found is None:
        print(f"acme-orders trace: no order {order_id}", file=sys.stderr)
        return 1
    print(timeline.render_timeline(found))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acme-orders",
        description="Acme order pipeline. Configuration comes from the environment "
        "(DATABASE_URL, RABBITMQ_URL, PAYMENT_SUCCESS_RATE, API_HOST, API_PORT, ...).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "migrate",
        help="create the database if missing, create or upgrade the schema, load the catalogue "
        "and declare the RabbitMQ exchanges and queues (safe to repeat)",
    )
    wait_parser = commands.add_parser(
        "wait-for-schema",
        help="wait until migrate has applied every migration of this version (a Kubernetes "
        "initContainer: the services start only then); needs only read access",
    )
    wait_parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="give up with exit code 1 after S seconds (default: wait for as long as it takes)",
    )
    run_parser = commands.add_parser("run", help="run a service in the foreground")
    run_parser.add_argument(
        "service", choices=[*SERVICES, "all"], help="one service, or all five as processes"
    )

    outbox = commands.add_parser("outbox", help="look at and clean the transactional outbox")
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True)
    outbox_commands.add_parser(
        "status", help="rows by status, and the age of the oldest one still to be published"
    )
    outbox_commands.add_parser(
        "purge",
        help="delete SENT outbox rows, processed_events and idempotency keys older than their "
        "retention, now (the publisher does it every HOUSEKEEPING_INTERVAL)",
    )

    dlq = commands.add_parser("dlq", help="look at and replay the dead-letter queues")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list_parser = dlq_commands.add_parser(
        "list", help="show the dead letters, leaving them where they are"
    )
    dlq_list_parser.add_argument(
        "queue", nargs="?", help="a consumer queue (or its .dlq); default: every consumer queue"
    )
    replay = dlq_commands.add_parser(
        "replay", help="move dead letters back to the queue they came from, to be handled again"
    )
    replay.add_argument("queue", help="the consumer queue (or its .dlq)")
    replay.add_argument(
        "--id",
        dest="message_ids",
        action="append",
        metavar="ID",
        help="only the message with this id (repeat for several); default: all of them",
    )

    apikey = commands.add_parser("apikey", help="create, list and revoke the API's keys")
    apikey_commands = apikey.add_subparsers(dest="apikey_command", required=True)
    apikey_create_parser = apikey_commands.add_parser(
        "create",
        help="make a new key and print it once, alone on stdout (only its hash is stored)",
    )
    apikey_create_parser.add_argument("name", help="who the key is for, e.g. storefront")
    apikey_create_parser.add_argument(
        "--scope",
        required=True,
        choices=[scope.value for scope in api_keys.Scope],
        help="orders:write places orders and reads its own; admin reads every order",
    )
    apikey_commands.add_parser("list", help="every key: name, scope, created, revoked")
    apikey_revoke_parser = apikey_commands.add_parser(
        "revoke", help="stop a key from working (within API_KEY_CACHE_TTL seconds)"
    )
    apikey_revoke_parser.add_argument("name", help="the key's name")

    forget_parser = commands.add_parser(
        "forget",
        help="erase a customer's e-mail address from their orders, notifications and outbox "
        "events, keeping the order history",
    )
    forget_parser.add_argument("customer_id", help="the customer_id their orders were placed with")

    trace_parser = commands.add_parser(
        "trace",
        help="an order's events in causal order: who emitted each, when it was published and "
        "when each consuming service handled it, in ms since the order was placed",
    )
    trace_parser.add_argument("order_id", type=UUID, help="the order's id")

    definitions = commands.add_parser(
        "broker-definitions",
        help="write RabbitMQ definitions with passwords for the broker to load at boot",
        description="Read a RabbitMQ definitions file whose users have no password (such as "
        "deploy/rabbitmq/definitions.json) and write it with each user's password hashed in, "
        "as RabbitMQ stores them, plus the vhosts its permissions name and, with "
        "--administrator, an administrator of them. Each user's password comes from the "
        "environment variable RABBITMQ_PASSWORD_<USER> (acme-publisher: "
        "RABBITMQ_PASSWORD_ACME_PUBLISHER); a missing one is an error.",
    )
    definitions.add_argument(
        "--template", type=Path, required=True, help="the definitions without passwords"
    )
    definitions.add_argument(
        "--output", type=Path, required=True, help="where to write them, with passwords"
    )
    definitions.add_argument(
        "--administrator",
        metavar="USER",
        help="also create USER with the administrator tag and every permission on the vhosts",
    )

    bench = commands.add_parser(
        "bench",
        help="measure throughput and latency under load with wrk, against a fresh system "
        "(or --attach to a running one), and the ceilings of the database and the broker",
        description="Measure the pipeline under load. By default brings the whole system up "
        "against a fresh database and vhost (acme_bench_<pid>_<hex>, created with "
        "DATABASE_ADMIN_URL and rabbitmqctl), loads POST /orders with wrk, takes every figure "
        "from the database over the steady window after the warm-up, then measures the "
        "database-only and broker-only ceilings and drops the database and vhost. Needs wrk "
        "(apt-get install wrk) and, for the ceilings, pgbench. With --drain N, measures the "
        "publisher alone relaying a backlog of N outbox rows instead (no wrk needed).",
    )
    bench.add_argument(
        "--attach",
        metavar="API_URL",
        help="load a running system instead (its database is DATABASE_URL); nothing is "
        "created, changed or dropped there, and the services' CPU is not reported",
    )
    bench.add_argument(
        "--rate",
        type=float,
        metavar="R",
        help="offered load in orders/s, paced by wrk; default: flat out, as fast as the "
        "connections get answers",
    )
    bench.add_argument(
        "--duration",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds of load after the warm-up (default: 10)",
    )
    bench.add_argument(
        "--orders",
        type=int,
        metavar="N",
        help="about N orders after the warm-up instead of --duration (N/R seconds); needs "
        "--rate: a flat-out run is given by --duration only",
    )
    bench.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds of load before the measured window, left out of every figure (default: 2)",
    )
    bench.add_argument(
        "--connections",
        type=int,
        metavar="N",
        help="wrk's open connections (default: max(8, R/25) at a rate, 32 flat out)",
    )
    bench.add_argument(
        "--threads", type=int, default=1, metavar="N", help="wrk threads (default: 1)"
    )
    bench.add_argument(
        "--payment-success-rate",
        type=float,
        default=1.0,
        metavar="P",
        help="PAYMENT_SUCCESS_RATE of the payment service started (default: 1.0)",
    )
    bench.add_argument(
        "--output",
        type=Path,
        metavar="PATH",
        help="the JSON results (default: bench-results/bench-<UTC timestamp>.json)",
    )
    bench.add_argument(
        "--instances",
        type=int,
        default=1,
        metavar="N",
        help="processes of the publisher and of each consumer (default: 1; the API is one)",
    )
    bench.add_argument(
        "--no-ceilings",
        dest="ceilings",
        action="store_false",
        help="skip the database-only and broker-only ceilings (quicker)",
    )
    bench.add_argument(
        "--ceiling-seconds",
        type=int,
        default=5,
        metavar="S",
        help="seconds each ceiling is measured (default: 5)",
    )
    bench.add_argument(
        "--drain",
        type=int,
        metavar="N",
        help="instead of the load: insert N NEW outbox rows (OrderPlaced-sized, routed to the "
        "bench's own queue bench.drain) into a fresh database, start only the publisher, and "
        "measure how fast it drains them; checks the queue then holds exactly N messages. "
        "Cannot be combined with --rate or --attach",
    )
    bench.add_argument(
        "--rabbitmqctl",
        type=shlex.split,
        default=["rabbitmqctl"],
        metavar="COMMAND",
        help="how to run rabbitmqctl, which creates and drops the bench's vhost, where RabbitMQ "
        "runs, e.g. 'docker exec eda-rabbitmq rabbitmqctl' (default: rabbitmqctl)",
    )
    return parser


def bench(args: argparse.Namespace) -> int:
    # Imported here: the services need none of the benchmark's modules (or psutil).
    from acme_orders.benchmark import runner

    configure_logging("bench", get_settings().log_level, get_settings().log_format)
    # The bench prints its own steps; creating the scratch database and queues is not news.
    for chatty in ("acme_orders.core.database", "acme_orders.core.messaging"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    return runner.run(
        runner.BenchOptions(
            attach=args.attach,
            rate=args.rate,
            duration=args.duration,
            orders=args.orders,
            warmup=args.warmup,
            connections=args.connections,
            threads=args.threads,
            payment_success_rate=args.payment_success_rate,
            output=args.output,
            ceilings=args.ceilings,
            ceiling_seconds=args.ceiling_seconds,
            drain=args.drain,
            rabbitmqctl=tuple(args.rabbitmqctl),
            instances=args.instances,
        )
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "migrate":
        sys.exit(migrate())
    if args.command == "wait-for-schema":
        sys.exit(wait_for_schema(args.timeout))
    if args.command == "outbox":
        sys.exit(outbox_status() if args.outbox_command == "status" else outbox_purge())
    if args.command == "dlq":
        if args.dlq_command == "list":
            sys.exit(dlq_list(args.queue))
        sys.exit(dlq_replay(args.queue, args.message_ids))
    if args.command == "apikey":
        if args.apikey_command == "create":
            sys.exit(apikey_create(args.name, args.scope))
        sys.exit(apikey_list() if args.apikey_command == "list" else apikey_revoke(args.name))
    if args.command == "forget":
        sys.exit(forget(args.customer_id))
    if args.command == "trace":
        sys.exit(trace(args.order_id))
    if args.command == "broker-definitions":
        sys.exit(write_broker_definitions(args.template, args.output, args.administrator))
    if args.command == "bench":
        sys.exit(bench(args))
    sys.exit(run(args.service))
