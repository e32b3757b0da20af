"""`acme-orders bench`: the options of a benchmark run, parsed here (the runtime's CLI hands
every argument after `bench` to `main`), and the run."""

from __future__ import annotations

import argparse
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path

from acme_orders.core.runtime import configure_logging
from acme_orders.core.settings import get_settings
from acme_orders_bench import runner, sweep


def build_parser() -> argparse.ArgumentParser:
    bench = argparse.ArgumentParser(
        prog="acme-orders bench",
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
        "--ceiling-batch",
        type=int,
        metavar="N",
        help="orders per batch of the database ceiling: each consumer's transaction handles N "
        "orders' events, as a consumer handles what it received up to its prefetch (default: "
        "PREFETCH_COUNT, the batches of the pipeline flat out; 1 models low rates)",
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
    bench.add_argument(
        "--sweep",
        type=_sweep_rates,
        metavar="R1,R2,...[,flat]",
        help="the latency curve: one run after the other at each offered rate (orders/s, "
        "rising; 'flat' last for flat out) against the same system, each with its --warmup and "
        "--duration; prints a table of them and writes a PNG chart beside the JSON (with the "
        "bench's extra 'chart': pip install './bench[chart]'), e.g. --sweep 100,250,500,750,flat",
    )
    bench.add_argument(
        "--history",
        type=int,
        metavar="N",
        help="before the services start, prefill the bench's fresh database with N finished "
        "orders and the rows they leave within the retention settings (set-based, a few "
        "minutes per million orders on two cores), then run the load; compare with the same "
        "run without it",
    )
    bench.add_argument(
        "--history-days",
        type=float,
        default=30.0,
        metavar="D",
        help="the days the history's orders are spread over, evenly (default: 30)",
    )
    bench.add_argument(
        "--purge",
        action="store_true",
        help="run housekeeping's purge (acme-orders outbox purge) from the middle of the measured "
        "window; reports how long it took, what it deleted, and the latency of the orders placed "
        "while it ran beside the others'. Most telling with --history",
    )
    bench.add_argument(
        "--quiet",
        action="store_true",
        help="no progress lines on stderr while the load runs (there are none when stderr is "
        "not a terminal)",
    )
    return bench


def _sweep_rates(text: str) -> tuple[float | None, ...]:
    try:
        return sweep.parse_rates(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """`acme-orders bench ARGS...`: the exit code of the run."""
    args = build_parser().parse_args(argv)
    configure_logging("bench", get_settings().log_level, get_settings().log_format)
    # The bench prints its own steps; creating the scratch database and queues is not news.
    for chatty in ("acme_orders.core.database", "acme_orders.core.messaging", "matplotlib"):
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
            sweep=args.sweep,
            history=args.history,
            history_days=args.history_days,
            purge=args.purge,
            quiet=args.quiet,
            ceiling_batch=args.ceiling_batch,
        )
    )
