"""The `acme-orders` command, and the one place that knows every service."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from acme_orders import database, messaging
from acme_orders.inventory import service as inventory
from acme_orders.notification import service as notification
from acme_orders.order_api import service as order_api
from acme_orders.payment import service as payment
from acme_orders.publisher import service as publisher
from acme_orders.runtime import ServiceMain, configure_logging, run_service
from acme_orders.settings import get_settings

logger = logging.getLogger("acme_orders.cli")

WORKERS: dict[str, ServiceMain] = {
    publisher.SERVICE: publisher.main,
    inventory.SERVICE: inventory.main,
    payment.SERVICE: payment.main,
    notification.SERVICE: notification.main,
}
SERVICES = (order_api.SERVICE, *WORKERS)
CONSUMER_QUEUES = [*inventory.QUEUES, *payment.QUEUES, *notification.QUEUES]


def migrate() -> int:
    settings = get_settings()
    configure_logging("migrate", settings.log_level)

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


def run(service: str) -> int:
    if service == "all":
        return run_all()
    if service == order_api.SERVICE:
        order_api.run()
    else:
        run_service(service, WORKERS[service])
    return 0


def run_all() -> int:
    """Each service in its own process; SIGINT or SIGTERM stops them all, and so does any one of
    them exiting. Returns 0 only when every service stopped cleanly."""
    settings = get_settings()
    configure_logging("run-all", settings.log_level)
    children = {
        name: subprocess.Popen([sys.executable, "-m", "acme_orders", "run", name])
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
    run_parser = commands.add_parser("run", help="run a service in the foreground")
    run_parser.add_argument(
        "service", choices=[*SERVICES, "all"], help="one service, or all five as processes"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "migrate":
        sys.exit(migrate())
    sys.exit(run(args.service))
