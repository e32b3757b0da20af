"""The `acme-orders` command: its arguments, and which function each subcommand calls. The
commands themselves are the services (services.py) and the operator's tools (ops/commands.py);
the benchmark is a distribution of its own (./bench)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from uuid import UUID

from acme_orders import services
from acme_orders.ops import api_keys, audit
from acme_orders.ops import commands as commands_


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
    ).set_defaults(handler=lambda _: commands_.migrate())
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
    wait_parser.set_defaults(handler=lambda args: commands_.wait_for_schema(args.timeout))
    run_parser = commands.add_parser("run", help="run a service in the foreground")
    run_parser.add_argument(
        "service",
        choices=[*services.SERVICES, "all"],
        help="one service, or all five as processes",
    )
    run_parser.set_defaults(
        handler=lambda args: (
            services.run_all() if args.service == "all" else services.run(args.service)
        )
    )

    outbox = commands.add_parser("outbox", help="look at and clean the transactional outbox")
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True)
    outbox_commands.add_parser(
        "status", help="rows by status, and the age of the oldest one still to be published"
    ).set_defaults(handler=lambda _: commands_.outbox_status())
    outbox_commands.add_parser(
        "purge",
        help="delete SENT outbox rows, processed_events and idempotency keys older than their "
        "retention, now (the publisher does it every HOUSEKEEPING_INTERVAL)",
    ).set_defaults(handler=lambda _: commands_.outbox_purge())

    dlq = commands.add_parser("dlq", help="look at and replay the dead-letter queues")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list_parser = dlq_commands.add_parser(
        "list", help="show the dead letters, leaving them where they are"
    )
    dlq_list_parser.add_argument(
        "queue", nargs="?", help="a consumer queue (or its .dlq); default: every consumer queue"
    )
    dlq_list_parser.set_defaults(handler=lambda args: commands_.dlq_list(args.queue))
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
    replay.set_defaults(handler=lambda args: commands_.dlq_replay(args.queue, args.message_ids))

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
        help="orders:write places orders and reads its own; admin reads every order; metrics "
        "reads GET /metrics only (for Prometheus)",
    )
    apikey_create_parser.set_defaults(
        handler=lambda args: commands_.apikey_create(args.name, args.scope)
    )
    apikey_commands.add_parser(
        "list", help="every key: name, scope, created, revoked"
    ).set_defaults(handler=lambda _: commands_.apikey_list())
    apikey_revoke_parser = apikey_commands.add_parser(
        "revoke", help="stop a key from working (within API_KEY_CACHE_TTL seconds)"
    )
    apikey_revoke_parser.add_argument("name", help="the key's name")
    apikey_revoke_parser.set_defaults(handler=lambda args: commands_.apikey_revoke(args.name))

    forget_parser = commands.add_parser(
        "forget",
        help="erase a customer's e-mail address from their orders, notifications and outbox "
        "events, keeping the order history",
    )
    forget_parser.add_argument("customer_id", help="the customer_id their orders were placed with")
    forget_parser.add_argument(
        "--key",
        metavar="NAME",
        dest="placed_with",
        help="on behalf of this API key's client: erase only the orders this key placed, and "
        "refuse a customer it placed none for",
    )
    forget_parser.set_defaults(
        handler=lambda args: commands_.forget(args.customer_id, args.placed_with)
    )

    trace_parser = commands.add_parser(
        "trace",
        help="an order's events in causal order: who emitted each, when it was published and "
        "when each consuming service handled it, in ms since the order was placed",
    )
    trace_parser.add_argument("order_id", type=UUID, help="the order's id")
    trace_parser.set_defaults(handler=lambda args: commands_.trace(args.order_id))

    cancel_parser = commands.add_parser(
        "cancel",
        help="cancel an order that is not final yet (reason operator): its stock goes back and it "
        "is never charged; exits 1 for an order that ended otherwise or does not exist",
    )
    cancel_parser.add_argument("order_id", type=UUID, help="the order's id")
    cancel_parser.set_defaults(handler=lambda args: commands_.cancel(args.order_id))

    stock = commands.add_parser("stock", help="change the products' stock")
    stock_commands = stock.add_subparsers(dest="stock_command", required=True)
    stock_add_parser = stock_commands.add_parser(
        "add",
        help="add stock to a product (a delivery), recorded in stock_ledger so that the audit "
        "knows of it",
    )
    stock_add_parser.add_argument("sku", help="the product's SKU")
    stock_add_parser.add_argument("qty", type=int, help="how many to add (1 to 1000000)")
    stock_add_parser.set_defaults(handler=lambda args: commands_.stock_add(args.sku, args.qty))

    audit_parser = commands.add_parser(
        "audit",
        help="check that the books balance (reservations, stock, notifications, events handled, "
        "dead letters, stuck orders); exit 0 clean, 1 findings, 3 database or 4 RabbitMQ "
        "unavailable",
    )
    audit_parser.add_argument(
        "--json", action="store_true", dest="as_json", help="print the report as JSON"
    )
    audit_parser.add_argument(
        "--grace",
        type=_seconds,
        default=audit.DEFAULT_GRACE.total_seconds(),
        metavar="S",
        help="leave orders final and events published less than S seconds ago for the next "
        "audit: their release, notification or handling may still be on its way (default: "
        "%(default)g)",
    )
    audit_parser.add_argument(
        "--stuck-after",
        type=_seconds,
        default=audit.DEFAULT_STUCK_AFTER.total_seconds(),
        metavar="S",
        help="report orders not final S seconds after they were placed, and where they wait "
        "(default: %(default)g)",
    )
    audit_parser.add_argument(
        "--limit",
        type=_positive,
        default=audit.DEFAULT_LIMIT,
        metavar="N",
        help="list at most N of each kind of finding; the counts are of all (default: %(default)d)",
    )
    audit_parser.set_defaults(
        handler=lambda args: commands_.audit(args.as_json, args.grace, args.stuck_after, args.limit)
    )

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
    definitions.set_defaults(
        handler=lambda args: commands_.write_broker_definitions(
            args.template, args.output, args.administrator
        )
    )

    bench = commands.add_parser(
        "bench",
        help="measure throughput and latency under load (the benchmark, ./bench: "
        "`acme-orders bench --help`)",
        # Every argument after `bench` is the benchmark's own, parsed by it.
        add_help=False,
        prefix_chars="\0",
    )
    bench.add_argument("arguments", nargs=argparse.REMAINDER)
    bench.set_defaults(handler=lambda args: run_bench(args.arguments))

    return parser


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def run_bench(arguments: list[str]) -> int:
    """`acme-orders bench ...`, when the benchmark is installed (it ships apart from the runtime,
    with its own dependencies)."""
    try:
        bench = importlib.import_module("acme_orders_bench.cli")
    except ModuleNotFoundError:
        print(
            "acme-orders bench: the benchmark is not installed; from the repository: "
            "pip install ./bench (./scripts/test.sh installs it into .venv)",
            file=sys.stderr,
        )
        return 2
    code: int = bench.main(arguments)
    return code


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.handler(args))
