"""`acme-orders bench`: bring the system up, load it with wrk, take the figures from the database
and /proc, measure the ceilings, report, and tear everything down again."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiormq
import asyncpg
import psutil

from acme_orders.core.settings import Settings, get_settings
from acme_orders.ops import housekeeping
from acme_orders_bench import (
    ceilings,
    drain,
    history,
    load,
    measure,
    progress,
    report,
    sweep,
    system,
)

logger = logging.getLogger(__name__)

DRAIN_DEADLINE = 60.0


@dataclass(frozen=True, slots=True)
class BenchOptions:
    attach: str | None
    rate: float | None
    duration: float
    orders: int | None
    warmup: float
    connections: int | None
    threads: int
    payment_success_rate: float
    output: Path | None
    ceilings: bool
    ceiling_seconds: int
    # --drain N: the publisher alone against a backlog of N rows, instead of the load.
    drain: int | None = None
    # --rabbitmqctl: how to run rabbitmqctl where the broker runs (it makes and drops the vhost).
    rabbitmqctl: tuple[str, ...] = ("rabbitmqctl",)
    # --instances N: processes of the publisher and of each consumer (the API stays one).
    instances: int = 1
    # --sweep R1,R2,...[,flat]: one window per offered rate (None: flat out), on one system.
    sweep: tuple[float | None, ...] | None = None
    # --history N: N finished orders prefilled over the last --history-days before the load.
    history: int | None = None
    history_days: float = 30.0
    # --purge: housekeeping's purge_all in the middle of the measured window, timed.
    purge: bool = False
    # --ceiling-batch N: orders per batch of the database ceiling (default: PREFETCH_COUNT).
    ceiling_batch: int | None = None
    # --quiet: no progress lines on stderr (there are none when stderr is not a terminal).
    quiet: bool = False

    @property
    def measured_seconds(self) -> float:
        """The steady-state part of the load: --orders N at a fixed rate is N/R seconds."""
        if self.orders is not None and self.rate:
            return self.orders / self.rate
        return self.duration

    def validate(self) -> None:
        if self.drain is not None:
            if self.drain < 1:
                raise ValueError("--drain needs at least 1 event")
            if self.rate is not None or self.attach is not None:
                raise ValueError(
                    "--drain cannot be combined with --rate or --attach: it starts only the "
                    "publisher, on a fresh database, with no load"
                )
        if self.sweep is not None and (
            self.rate is not None or self.orders is not None or self.drain is not None
        ):
            raise ValueError(
                "--sweep gives the rates itself: it cannot be combined with --rate, --orders or "
                "--drain"
            )
        if self.history is not None:
            if self.history < 1:
                raise ValueError("--history needs at least 1 order")
            if self.attach is not None or self.drain is not None:
                raise ValueError(
                    "--history fills the bench's own fresh database: not with --attach or --drain"
                )
            if self.history_days <= 0:
                raise ValueError("--history-days must be above 0")
        if self.purge and (
            self.attach is not None or self.drain is not None or self.sweep is not None
        ):
            raise ValueError(
                "--purge deletes rows of the bench's own database in one measured window: not "
                "with --attach, --drain or --sweep"
            )
        if self.rate is not None and self.rate <= 0:
            raise ValueError("--rate must be above 0")
        if self.orders is not None and not self.rate:
            raise ValueError("--orders needs --rate: flat out, the load is given by --duration")
        if self.measured_seconds < 1:
            raise ValueError("the load must last at least 1 s after the warm-up")
        if self.warmup < 0:
            raise ValueError("--warmup cannot be negative")
        if self.threads < 1 or (self.connections is not None and self.connections < self.threads):
            raise ValueError("--threads must be at least 1 and --connections at least --threads")
        if not 0 <= self.payment_success_rate <= 1:
            raise ValueError("--payment-success-rate is a probability, from 0 to 1")
        if self.ceiling_batch is not None and self.ceiling_batch < 1:
            raise ValueError("--ceiling-batch must be at least 1")
        if self.ceiling_seconds < 1:
            raise ValueError("--ceiling-seconds must be at least 1")
        if self.instances < 1 or (self.instances > 1 and self.attach is not None):
            raise ValueError("--instances must be at least 1, and starts services: not --attach")


def default_output() -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path("bench-results") / f"bench-{stamp}.json"


def _version_of(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# Erlang's schedulers spin while idle unless told not to; on two shared cores that spinning takes
# CPU from everything else. These are the flags that turn it off.
BUSY_WAIT_FLAGS = ("-sbwt", "-sbwtdcpu", "-sbwtdio")


def _rabbitmq_busy_wait() -> str | None:
    """ "off" when the local RabbitMQ runs with every busy-wait flag set to none, "on" when it
    runs without them, None when no RabbitMQ runs on this machine."""
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] != "beam.smp" or "rabbit" not in " ".join(
            process.info["cmdline"] or []
        ):
            continue
        args = process.info["cmdline"]
        given = {flag: value for flag, value in itertools.pairwise(args) if flag in BUSY_WAIT_FLAGS}
        off = all(given.get(flag) == "none" for flag in BUSY_WAIT_FLAGS)
        return "off" if off else "on"
    return None


# The machine's speed as one figure: the seconds a fixed Python loop takes, the best of a few
# tries. The VM's host shares its cores: the same work took four times as long in one session as
# in another, and this says which kind of session a run was made in.
SPEED_LOOP = 2_000_000
SPEED_TRIES = 5


def python_loop_seconds() -> float:
    """Seconds of sum(i * i for i in range(SPEED_LOOP)), the best of SPEED_TRIES."""
    best = float("inf")
    for _ in range(SPEED_TRIES):
        started = time.perf_counter()
        sum(i * i for i in range(SPEED_LOOP))
        best = min(best, time.perf_counter() - started)
    return round(best, 4)


async def machine(pool: asyncpg.Pool, rabbitmq_url: str) -> dict[str, Any]:
    """What the figures were measured on, durability settings included."""
    server: dict[str, str] = {
        r["name"]: r["setting"]
        for r in await pool.fetch(
            """
            SELECT name, setting FROM pg_settings
            WHERE name IN ('server_version', 'synchronous_commit', 'fsync', 'full_page_writes',
                           'wal_sync_method', 'shared_buffers', 'max_connections')
            """
        )
    }
    connection = await aiormq.connect(rabbitmq_url)
    try:
        rabbitmq_version = connection.server_properties.get("version")
    finally:
        await connection.close()
    memory = psutil.virtual_memory().total
    return {
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python_loop_seconds": await asyncio.to_thread(python_loop_seconds),
        "python": platform.python_version(),
        "postgresql": server.pop("server_version", None),
        "postgresql_settings": server,
        "rabbitmq": str(rabbitmq_version) if rabbitmq_version is not None else None,
        "rabbitmq_busy_wait": _rabbitmq_busy_wait(),
        "wrk": _version_of(["wrk", "-v"]),
        "pgbench": _version_of(["pgbench", "--version"]),
    }


def _say(text: str) -> None:
    print(text, flush=True)


@dataclass
class Pipeline:
    """What one load run measured."""

    figures: dict[str, Any]
    load: dict[str, Any]
    cpu: dict[str, float]
    # Per service: RSS in MiB at the window's start and end, its max, the change in percent.
    memory: dict[str, dict[str, float | None]]
    series: list[dict[str, Any]]


async def measure_pipeline(
    options: BenchOptions,
    pool: asyncpg.Pool,
    api_url: str,
    skus: list[str],
    services: system.Services | None,
    reporter: progress.Reporter | None = None,
    label: str = "",
    purge_settings: Settings | None = None,
) -> Pipeline:
    """One load run: wrk at options.rate for the warm-up and the window, the figures of the
    window once every order placed is final. With `purge_settings`, housekeeping's purge_all runs
    with them from the middle of the window, and the latency of the orders placed while it ran
    is set beside that of the others."""
    service_pids = services.pids if services else {}
    plan = load.LoadPlan(
        url=api_url,
        seconds=options.warmup + options.measured_seconds,
        rate=options.rate,
        threads=options.threads,
        connections=options.connections or load.default_connections(options.rate),
    )
    run_start = await measure.db_now(pool)
    with load.script_file() as script:
        # wrk has exited by the time the window closes: its CPU is read from its rusage.
        children_before = measure.children_cpu_seconds()
        wrk = await load.start_wrk(plan, script, skus)
        started = time.monotonic()
        meter = measure.CpuMeter(
            pids={
                **{name: [pid] for name, pid in service_pids.items()},
                "wrk": [wrk.pid],
                # This process: the sampling queries and the waiting cost something too.
                "bench": [os.getpid()],
            },
            names=dict(measure.SERVER_PROCESS_NAMES),
        )
        sampler = measure.Sampler(
            pool,
            run_start,
            plan.seconds,
            pids=dict(service_pids),
            meter=meter,
            reporter=reporter,
            label=label,
        )
        sampling = asyncio.create_task(sampler.run(started))
        try:
            # The warm-up, unless wrk ends (or fails) first.
            wrk_done = asyncio.create_task(load.finish_wrk(wrk))
            await asyncio.wait({wrk_done}, timeout=options.warmup)
            window_start = await measure.db_now(pool)
            purging = (
                asyncio.create_task(
                    _purge_later(purge_settings, options.measured_seconds / 2, reporter)
                )
                if purge_settings is not None
                else None
            )
            meter.begin()
            # Read at the window's edges, not at the nearest once-a-second sample.
            rss_start = measure.rss_mib(service_pids)
            wal_start = await measure.wal_counters(pool)
            load_result = await wrk_done
            window_end = await measure.db_now(pool)
            wal_end = await measure.wal_counters(pool)
            cpu = meter.end()
            rss_end = measure.rss_mib(service_pids)
            cpu["wrk"] = meter.exited_group("wrk", measure.children_cpu_seconds() - children_before)
            purge = await purging if purging is not None else None
        finally:
            sampling.cancel()
            await asyncio.gather(sampling, return_exceptions=True)
            if purging is not None and not purging.done():
                purging.cancel()
                await asyncio.gather(purging, return_exceptions=True)
            if wrk.returncode is None:
                wrk.kill()
                await wrk.wait()

    drain_started = time.monotonic()

    def waiting(pending: int) -> None:
        if services is not None:
            services.check_running()
        at = time.monotonic() - drain_started
        if reporter is not None and reporter.due(plan.seconds + at):
            reporter.rate(plan.seconds + at, 0)
            reporter.line(f"{label}waiting for {pending:,} orders to finish ({at:.0f} s)")

    unfinished = await measure.wait_until_final(pool, run_start, DRAIN_DEADLINE, waiting)
    drain_seconds = time.monotonic() - drain_started
    figures = await measure.window_figures(pool, window_start, window_end)
    figures["wal"] = measure.wal_figures(wal_start, wal_end, figures["accepted_orders"])
    if purge is not None:
        figures["purge"] = await _purge_figures(pool, purge, window_start, window_end)
    backlog_in_window = [s.backlog for s in sampler.samples if s.at >= options.warmup]
    figures.update(
        window_start=window_start.isoformat(),
        window_end=window_end.isoformat(),
        backlog_max=max(backlog_in_window, default=0),
        backlog_max_whole_run=max((s.backlog for s in sampler.samples), default=0),
        unfinished_orders=unfinished,
        drain_seconds=round(drain_seconds, 2),
    )
    load_json = load_result.as_json()
    load_json.update(threads=plan.threads, connections=plan.connections, seconds_asked=plan.seconds)
    if options.rate and load_result.sent_per_second < 0.95 * options.rate:
        logger.warning(
            "wrk sent %.1f requests/s, less than the %g asked for: the API kept up with fewer "
            "(too few connections for its latency, or it is saturated)",
            load_result.sent_per_second,
            options.rate,
        )
    memory = measure.rss_figures(
        rss_start, rss_end, (s.rss_mib for s in sampler.samples if s.at >= options.warmup)
    )
    return Pipeline(figures, load_json, cpu, memory, [asdict(s) for s in sampler.samples])


@dataclass(frozen=True, slots=True)
class PurgeRun:
    started: datetime  # the database's clock
    ended: datetime
    seconds: float
    deleted: dict[str, int]


async def _purge_later(
    settings: Settings, delay: float, reporter: progress.Reporter | None
) -> PurgeRun:
    """purge_all with the batch size configured, `delay` seconds from now, on a pool of its own
    (as the publisher's housekeeping has), timed by the database's clock: deleting what the next
    housekeeping run would (history.next_purge), the rows that passed their retention in one
    HOUSEKEEPING_INTERVAL."""
    await asyncio.sleep(delay)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1, timeout=10)
    assert pool is not None
    try:
        if reporter is not None:
            reporter.line("purge: housekeeping's purge_all starts")
        started = await measure.db_now(pool)
        began = time.monotonic()
        deleted = await housekeeping.purge_all(pool, history.next_purge(settings))
        seconds = time.monotonic() - began
        ended = await measure.db_now(pool)
        if reporter is not None:
            reporter.line(f"purge: done in {seconds:.2f} s, deleted {deleted}")
    finally:
        await pool.close()
    return PurgeRun(started, ended, round(seconds, 3), deleted)


async def _purge_figures(
    pool: asyncpg.Pool, purge: PurgeRun, window_start: datetime, window_end: datetime
) -> dict[str, Any]:
    """What the purge deleted, how long it took, and the latency of the window's orders placed
    while it ran beside that of the window's other orders."""
    during_start, during_end = max(purge.started, window_start), min(purge.ended, window_end)
    return {
        "seconds": purge.seconds,
        "deleted": purge.deleted,
        "started": purge.started.isoformat(),
        "ended": purge.ended.isoformat(),
        "ran_past_the_window": purge.ended > window_end,
        "latency_during_ms": await measure.latency_between(
            pool, window_start, window_end, during_start, during_end, inside=True
        ),
        "latency_outside_ms": await measure.latency_between(
            pool, window_start, window_end, during_start, during_end, inside=False
        ),
    }


async def measure_ceilings(
    options: BenchOptions, base: Settings, scratch: system.Scratch | None, skus: list[str]
) -> dict[str, Any]:
    """Both ceilings, on the run's own database and vhost (with --attach, on a scratch pair made
    for them, never on the attached system's). A failure is recorded, not raised: the pipeline's
    figures are worth keeping."""
    made = None
    results: dict[str, Any] = {}
    try:
        if scratch is None:
            scratch = made = await system.create_scratch(base, options.rabbitmqctl)
        batch = options.ceiling_batch or base.prefetch_count
        _say(
            f"ceiling: database only (pgbench, {options.ceiling_seconds} s, batches of {batch} "
            "orders)"
        )
        try:
            results["database"] = await ceilings.database_ceiling(
                scratch.settings.database_url,
                skus,
                options.ceiling_seconds,
                batch,
                base.outbox_batch_size,
            )
        except (ceilings.CeilingError, OSError) as exc:
            results["database"] = {"error": str(exc)}
        _say(f"ceiling: broker only (publish and consume, {options.ceiling_seconds} s)")
        try:
            results["broker"] = await ceilings.broker_ceiling(
                scratch.settings, options.ceiling_seconds
            )
        except (ceilings.CeilingError, OSError, aiormq.exceptions.AMQPError) as exc:
            results["broker"] = {"error": str(exc)}
    except (system.SetupError, OSError, asyncpg.PostgresError) as exc:
        results["error"] = f"could not create a scratch database and vhost: {exc}"
    finally:
        if made is not None:
            await system.drop_scratch(made)
    return results


async def bench_drain(options: BenchOptions) -> dict[str, Any]:
    """--drain N: a fresh database and vhost, N NEW outbox rows, only the publisher."""
    assert options.drain is not None
    base = get_settings()
    result: dict[str, Any] = {
        "mode": "publisher drain",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": {
            "drain": options.drain,
            "ceilings": options.ceilings,
            "ceiling_seconds": options.ceiling_seconds,
        },
    }
    scratch: system.Scratch | None = None
    services: system.Services | None = None
    log_dir = Path(tempfile.mkdtemp(prefix="acme-bench-logs-"))
    failed = True
    try:
        scratch = await _fresh_scratch(base, options)
        _say(f"created database and vhost {scratch.name}")
        result["system"] = {
            "database": scratch.name,
            "vhost": scratch.name,
            "queue": drain.QUEUE.name,
            "service_settings": {
                "db_pool_size": base.db_pool_size,
                "outbox_batch_size": base.outbox_batch_size,
                "outbox_poll_interval": base.outbox_poll_interval,
            },
        }
        pool = await asyncpg.create_pool(
            scratch.settings.database_url, min_size=1, max_size=1, timeout=10
        )
        assert pool is not None
        try:
            result["machine"] = await machine(pool, scratch.settings.rabbitmq_url)
            skus = [r["sku"] for r in await pool.fetch("SELECT sku FROM products ORDER BY sku")]
        finally:
            await pool.close()
        found, services = await drain.measure_drain(
            options.drain, scratch, log_dir, _say, progress.Reporter.for_terminal(options.quiet)
        )
        result.update(found)
        if services is not None:
            result["system"]["exit_codes"] = await system.stop_services(services)
            services = None
        # Counted once the publisher is stopped: every SENT row was confirmed by the broker.
        result["queue"] = await drain.check_queue(scratch.settings, options.drain)
        if not result["queue"]["ok"] and "error" not in result:
            result["error"] = (
                f"{drain.QUEUE.name} holds {result['queue']['messages']:,} messages, "
                f"not the {options.drain:,} events published"
            )
        if options.ceilings:
            found_ceilings = await measure_ceilings(options, base, scratch, skus)
            rate = result["figures"]["events_per_second"]
            broker = found_ceilings.get("broker")
            if rate and isinstance(broker, dict) and broker.get("messages_per_second"):
                broker["drain_ratio"] = round(rate / broker["messages_per_second"], 4)
            result["ceilings"] = found_ceilings
        failed = "error" in result
    finally:
        await _tear_down(services, scratch, failed, log_dir)
    return result


async def bench(options: BenchOptions) -> dict[str, Any]:
    if options.drain is not None:
        return await bench_drain(options)
    base = get_settings()
    load.wrk_path()  # fails now, with how to install it, rather than after the bring-up
    mode = "attached" if options.attach else "fresh system"
    result: dict[str, Any] = {
        "mode": "sweep" if options.sweep else mode,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": {
            "attach": options.attach,
            "rate": options.rate,
            "duration": options.measured_seconds,
            "orders": options.orders,
            "warmup": options.warmup,
            "connections": options.connections,
            "threads": options.threads,
            "payment_success_rate": options.payment_success_rate,
            "ceilings": options.ceilings,
            "ceiling_seconds": options.ceiling_seconds,
            "sweep": list(options.sweep) if options.sweep else None,
            "history": options.history,
            "history_days": options.history_days if options.history else None,
            "purge": options.purge,
        },
    }
    scratch: system.Scratch | None = None
    services: system.Services | None = None
    log_dir = Path(tempfile.mkdtemp(prefix="acme-bench-logs-"))
    failed = True
    reporter = progress.Reporter.for_terminal(options.quiet)
    try:
        if options.attach:
            api_url, settings = options.attach, base
        else:
            scratch = await _fresh_scratch(base, options)
            settings = scratch.settings
            if options.history:
                _say(
                    f"created database and vhost {scratch.name}; prefilling {options.history:,} "
                    f"orders of history over {options.history_days:g} days"
                )
                result["history"] = await history.prefill(
                    settings.database_url, settings, options.history, options.history_days, _say
                )
            _say(f"created database and vhost {scratch.name}; starting the services")
            environ = system.service_environment(
                settings, system.free_port(), options.payment_success_rate
            )
            from acme_orders.services import SERVICES

            services = await system.start_services(
                system.instance_names(SERVICES, options.instances), environ, log_dir
            )
            api_url = services.api_url
            result["system"] = {
                "database": scratch.name,
                "vhost": scratch.name,
                # The services read the same environment as we did, but for these two.
                "service_settings": {
                    "db_pool_size": base.db_pool_size,
                    "prefetch_count": base.prefetch_count,
                    "outbox_batch_size": base.outbox_batch_size,
                    "outbox_poll_interval": base.outbox_poll_interval,
                    "payment_success_rate": options.payment_success_rate,
                    "instances": options.instances,
                    "log_level": environ["LOG_LEVEL"],
                },
            }
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2, timeout=10)
        assert pool is not None
        try:
            result["machine"] = await machine(pool, settings.rabbitmq_url)
            skus = [r["sku"] for r in await pool.fetch("SELECT sku FROM products ORDER BY sku")]
            if not skus:
                raise system.SetupError("the catalogue is empty: nothing to order")
            if options.sweep:
                steps = await measure_sweep(options, pool, api_url, skus, services, reporter)
                result["steps"] = steps
                result["chart"] = _chart(steps, options, result)
                pipeline = None
            else:
                offered = f"{options.rate:g} orders/s" if options.rate else "flat out"
                _say(
                    f"load: {offered} for {options.warmup:g} s warm-up + "
                    f"{options.measured_seconds:g} s against {api_url}"
                )
                pipeline = await measure_pipeline(
                    options,
                    pool,
                    api_url,
                    skus,
                    services,
                    reporter,
                    purge_settings=settings if options.purge else None,
                )
        finally:
            await pool.close()
        if pipeline is not None:
            purge = pipeline.figures.pop("purge", None)
            if purge is not None:
                result["purge"] = purge
            result.update(
                figures=pipeline.figures,
                load=pipeline.load,
                cpu_percent_of_one_core=pipeline.cpu,
                rss_mib=pipeline.memory,
                series=pipeline.series,
            )
        if services is not None:
            # Before the ceilings: idle services would still wake up for the ceiling's outbox rows.
            codes = await system.stop_services(services)
            result["system"]["exit_codes"] = codes
            services = None
        if options.ceilings:
            found = await measure_ceilings(options, base, scratch, skus)
            # A sweep's pipeline figure is its fastest step's.
            e2e = (
                pipeline.figures["end_to_end_per_second"]
                if pipeline is not None
                else max(step["figures"]["end_to_end_per_second"] for step in result["steps"])
            )
            for ceiling in found.values():
                if isinstance(ceiling, dict) and ceiling.get("orders_per_second"):
                    ceiling["pipeline_ratio"] = round(e2e / ceiling["orders_per_second"], 4)
            result["ceilings"] = found
        failed = False
    finally:
        await _tear_down(services, scratch, failed, log_dir)
    return result


async def measure_sweep(
    options: BenchOptions,
    pool: asyncpg.Pool,
    api_url: str,
    skus: list[str],
    services: system.Services | None,
    reporter: progress.Reporter,
) -> list[dict[str, Any]]:
    """Each offered rate of the sweep in turn on the same system, with its own warm-up and window;
    a step starts once every order of the one before is final (measure_pipeline waits for that),
    so that no step's latency carries the backlog of the last."""
    assert options.sweep is not None
    steps = []
    for number, rate in enumerate(options.sweep, 1):
        step_options = replace(options, rate=rate)
        label = f"step {number}/{len(options.sweep)} {sweep.offered_label(rate)}: "
        _say(
            f"{label}{options.warmup:g} s warm-up + {options.measured_seconds:g} s against "
            f"{api_url}"
        )
        reporter.restart()
        pipeline = await measure_pipeline(
            step_options, pool, api_url, skus, services, reporter, label
        )
        steps.append(
            {
                "offered": rate,
                "figures": pipeline.figures,
                "load": pipeline.load,
                "cpu_percent_of_one_core": pipeline.cpu,
                "rss_mib": pipeline.memory,
                "series": pipeline.series,
            }
        )
    return steps


def _chart(
    steps: list[dict[str, Any]], options: BenchOptions, result: dict[str, Any]
) -> dict[str, str]:
    """The sweep's PNG beside its JSON, or why there is none."""
    path = (options.output or default_output()).with_suffix(".png")
    title = f"acme-orders bench --sweep, {result['started_at']}"
    try:
        sweep.write_chart(steps, path, title)
    except sweep.ChartUnavailableError as exc:
        _say(str(exc))
        return {"skipped": str(exc)}
    return {"path": str(path)}


async def _fresh_scratch(base: Settings, options: BenchOptions) -> system.Scratch:
    """Drop what crashed runs left behind, then make this run's own database and vhost."""
    swept = await system.sweep_abandoned(base, options.rabbitmqctl)
    if swept:
        _say(f"dropped what crashed benchmark runs left: {', '.join(swept)}")
    return await system.create_scratch(base, options.rabbitmqctl)


async def _tear_down(
    services: system.Services | None,
    scratch: system.Scratch | None,
    failed: bool,
    log_dir: Path,
) -> None:
    """Whatever a run started is stopped and dropped, however it ended."""
    if services is not None:
        await system.stop_services(services)
    if scratch is not None:
        await system.drop_scratch(scratch)
    _keep_logs_if(failed, log_dir)


def _keep_logs_if(failed: bool, log_dir: Path) -> None:
    """The services' logs tell why a run failed; a run that succeeded needs none of them."""
    if failed and any(log_dir.iterdir()):
        print(f"service logs kept in {log_dir}", file=sys.stderr)
    else:
        shutil.rmtree(log_dir, ignore_errors=True)


def run(options: BenchOptions) -> int:
    try:
        options.validate()
    except ValueError as exc:
        print(f"acme-orders bench: {exc}", file=sys.stderr)
        return 2
    output = options.output or default_output()
    # The chart of a sweep is written beside the JSON, with the same name.
    options = replace(options, output=output)
    try:
        result = asyncio.run(bench(options))
    except (load.WrkMissingError, system.SetupError) as exc:
        print(f"acme-orders bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("acme-orders bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    report.write_json(result, output)
    print(sweep.summary(result) if result["mode"] == "sweep" else report.summary(result))
    print(f"results: {output}")
    ceiling_failed = any(
        isinstance(c, dict) and "error" in c for c in result.get("ceilings", {}).values()
    ) or "error" in result.get("ceilings", {})
    # A drain that did not finish, or a queue that does not hold every event once.
    if "error" in result:
        print(f"acme-orders bench: {result['error']}", file=sys.stderr)
        return 1
    return 1 if ceiling_failed else 0
