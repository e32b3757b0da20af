"""The figures: counted in the database (never by polling the API as a client), and CPU time and
resident memory read from /proc (through psutil) for each process of the system."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import asyncpg
import psutil

from acme_orders.core.orders import FINAL_STATUSES
from acme_orders_bench import progress as progress_lines

logger = logging.getLogger(__name__)

FINALS = sorted(s.value for s in FINAL_STATUSES)
# Processes of the servers, found by name: every PostgreSQL backend is a "postgres" process, and
# RabbitMQ's Erlang VM is one "beam.smp".
SERVER_PROCESS_NAMES = {"postgresql": "postgres", "rabbitmq": "beam.smp"}


async def db_now(pool: asyncpg.Pool) -> datetime:
    """The database's clock: the window is compared with timestamps the database wrote."""
    moment: datetime = await pool.fetchval("SELECT clock_timestamp()")
    return moment


@dataclass(frozen=True, slots=True)
class Progress:
    at: float  # seconds since the load started
    accepted: int
    final: int
    backlog: int
    # MiB per service process, read in the same tick (empty when no service is ours: --attach).
    rss_mib: dict[str, float] = field(default_factory=dict)


async def progress(pool: asyncpg.Pool, since: datetime, at: float) -> Progress:
    """Orders placed since the run started, how many of them are final, and the NEW outbox rows.
    Cheap enough to ask every second: index scans (orders_created_at_idx over the run's orders
    and the outbox's partial index on NEW rows)."""
    row = await pool.fetchrow(
        """
        SELECT (SELECT count(*) FROM orders WHERE created_at >= $1) AS accepted,
               (SELECT count(*) FROM orders
                WHERE status = ANY($2::text[]) AND created_at >= $1) AS final,
               (SELECT count(*) FROM event_outbox WHERE status = 'NEW') AS backlog
        """,
        since,
        FINALS,
    )
    assert row is not None
    return Progress(round(at, 1), row["accepted"], row["final"], row["backlog"])


# Seconds between two readings of every process's CPU time while the load runs: reading them all
# takes several ms of CPU, and a backend that ends between two readings loses only what it used
# since the last.
CPU_SAMPLE_EVERY = 5


@dataclass
class Sampler:
    """Every second while the load runs: a Progress sample; and every few seconds, on a terminal,
    the progress line (see progress.Reporter)."""

    pool: asyncpg.Pool
    since: datetime
    total_seconds: float
    # The service processes whose RSS is read with every sample.
    pids: dict[str, int] = field(default_factory=dict)
    # Sampled every CPU_SAMPLE_EVERY seconds, once begun (see CpuMeter).
    meter: CpuMeter | None = None
    samples: list[Progress] = field(default_factory=list)
    reporter: progress_lines.Reporter | None = None
    # Put before each progress line: which step of a sweep it is.
    label: str = ""

    async def run(self, started: float) -> None:
        tick = 0
        while True:
            tick += 1
            # Sleep to the next whole second of the run, so samples do not drift.
            await asyncio.sleep(max(0.0, started + tick - time.monotonic()))
            sample = await progress(self.pool, self.since, time.monotonic() - started)
            sample = replace(sample, rss_mib=rss_mib(self.pids))
            if self.meter is not None and tick % CPU_SAMPLE_EVERY == 0:
                self.meter.sample()
            self.samples.append(sample)
            reporter = self.reporter
            if reporter is not None and reporter.due(sample.at):
                rate = reporter.rate(sample.at, sample.accepted)
                reporter.line(
                    progress_lines.load_line(
                        self.label,
                        sample.at,
                        self.total_seconds,
                        sample.accepted,
                        rate,
                        sample.final,
                        sample.backlog,
                    )
                )


async def wait_until_final(
    pool: asyncpg.Pool, since: datetime, deadline: float, on_wait: Callable[[int], None]
) -> int:
    """After the load: wait up to `deadline` seconds for every order placed since `since` to reach
    a final status; the number that did not."""
    give_up = time.monotonic() + deadline
    while True:
        pending: int = await pool.fetchval(
            "SELECT count(*) FROM orders WHERE created_at >= $1 AND status <> ALL($2::text[])",
            since,
            FINALS,
        )
        if pending == 0 or time.monotonic() > give_up:
            return pending
        on_wait(pending)
        await asyncio.sleep(0.5)


async def window_figures(pool: asyncpg.Pool, start: datetime, end: datetime) -> dict[str, Any]:
    """Counts and rates over [start, end): orders placed (created_at), orders finished (the final
    status written, updated_at), events published (published_at); and the latency from placement
    to final status of the orders placed in the window, all of which are final by now or counted
    as unfinished."""
    seconds = (end - start).total_seconds()
    row = await pool.fetchrow(
        """
        SELECT
          (SELECT count(*) FROM orders WHERE created_at >= $1 AND created_at < $2) AS accepted,
          (SELECT count(*) FROM orders
           WHERE status = ANY($3::text[]) AND updated_at >= $1 AND updated_at < $2) AS finished,
          (SELECT count(*) FROM event_outbox
           WHERE published_at >= $1 AND published_at < $2) AS published
        """,
        start,
        end,
        FINALS,
    )
    assert row is not None
    latency = await pool.fetchrow(
        """
        SELECT count(*) AS orders,
               percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY ms) AS pct,
               max(ms) AS max
        FROM (SELECT extract(epoch FROM updated_at - created_at) * 1000 AS ms
              FROM orders
              WHERE created_at >= $1 AND created_at < $2 AND status = ANY($3::text[])) AS final
        """,
        start,
        end,
        FINALS,
    )
    assert latency is not None
    statuses = {
        r["status"]: r["n"]
        for r in await pool.fetch(
            """
            SELECT status, count(*) AS n FROM orders
            WHERE created_at >= $1 AND created_at < $2
            GROUP BY status ORDER BY status
            """,
            start,
            end,
        )
    }
    pct = latency["pct"] or [None, None, None]

    def ms(value: Any) -> float | None:
        return None if value is None else round(float(value), 2)

    return {
        "window_seconds": round(seconds, 3),
        "accepted_orders": row["accepted"],
        "accepted_per_second": round(row["accepted"] / seconds, 1),
        "finished_orders": row["finished"],
        "end_to_end_per_second": round(row["finished"] / seconds, 1),
        "published_events": row["published"],
        "publisher_events_per_second": round(row["published"] / seconds, 1),
        "statuses": statuses,
        "latency_ms": {
            "orders": latency["orders"],
            "p50": ms(pct[0]),
            "p90": ms(pct[1]),
            "p99": ms(pct[2]),
            "max": ms(latency["max"]),
        },
    }


# Write-ahead log -------------------------------------------------------------------------------

# What the server has written to its write-ahead log since its statistics were reset, and the
# checkpoints it made (timed: checkpoint_timeout; requested: max_wal_size filled, or asked for).
# The server's figures, not one database's: on a server other runs use, their writes count too.
WAL_COUNTERS = """
SELECT w.wal_records, w.wal_fpi, w.wal_bytes::bigint AS wal_bytes,
       b.checkpoints_timed, b.checkpoints_req
FROM pg_stat_wal AS w CROSS JOIN pg_stat_bgwriter AS b
"""


async def wal_counters(pool: asyncpg.Pool) -> dict[str, int]:
    row = await pool.fetchrow(WAL_COUNTERS)
    assert row is not None
    return dict(row)


def wal_figures(start: dict[str, int], end: dict[str, int], orders: int) -> dict[str, Any]:
    """The WAL written between two readings, in all and per order accepted in between; the
    full-page images are what a page's first change after a checkpoint costs."""
    written = {name: end[name] - start[name] for name in start}
    per_order = (lambda n: round(n / orders, 1)) if orders else (lambda n: None)
    return {
        "bytes": written["wal_bytes"],
        "records": written["wal_records"],
        "full_page_images": written["wal_fpi"],
        "bytes_per_order": per_order(written["wal_bytes"]),
        "full_page_images_per_order": per_order(written["wal_fpi"]),
        "checkpoints_timed": written["checkpoints_timed"],
        "checkpoints_requested": written["checkpoints_req"],
    }


# CPU -------------------------------------------------------------------------------------------

# (pid, start time) -> user + system CPU seconds so far; the start time tells a reused pid apart.
CpuSnapshot = dict[tuple[int, float], float]


def _cpu_seconds(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return float(times.user + times.system)


def processes_named(name: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == name:
            found.append(process)
    return found


@dataclass
class CpuMeter:
    """CPU time of groups of processes between two snapshots, as a percentage of one core.

    A group is a fixed list of pids (a service, wrk) or a process name looked up at each snapshot
    (PostgreSQL's backends come and go). A process that started between the snapshots counts from
    zero. One that ended in between counts up to the last sample() that saw it: asyncpg replaces a
    pool's connection after 50,000 queries, which under load is every minute or so, and the
    backend that served it goes with its CPU time. Call sample() every few seconds."""

    pids: dict[str, list[int]]
    names: dict[str, str]
    start: dict[str, CpuSnapshot] = field(default_factory=dict)
    # The latest CPU seconds read of every process seen since begin(), ended ones included.
    last_seen: dict[str, CpuSnapshot] = field(default_factory=dict)
    start_time: float = 0.0
    start_machine: float = 0.0
    elapsed: float = 0.0

    def _snapshot(self) -> dict[str, CpuSnapshot]:
        groups: dict[str, Iterable[psutil.Process]] = {}
        for group, pids in self.pids.items():
            alive = []
            for pid in pids:
                with contextlib.suppress(psutil.NoSuchProcess):
                    alive.append(psutil.Process(pid))
            groups[group] = alive
        for group, name in self.names.items():
            groups[group] = processes_named(name)
        snapshot: dict[str, CpuSnapshot] = {}
        for group, processes in groups.items():
            seconds = {(p.pid, p.create_time()): _cpu_seconds(p) for p in processes}
            snapshot[group] = {key: s for key, s in seconds.items() if s is not None}
        return snapshot

    @staticmethod
    def _machine_busy() -> float:
        times = psutil.cpu_times()
        return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))

    def begin(self) -> None:
        self.start = self._snapshot()
        self.last_seen = {group: dict(seconds) for group, seconds in self.start.items()}
        self.start_time = time.monotonic()
        self.start_machine = self._machine_busy()

    def sample(self) -> None:
        """Read every process's CPU time now, so that one ending before end() is not missed."""
        if not self.start_time:
            return
        for group, seconds in self._snapshot().items():
            self.last_seen.setdefault(group, {}).update(seconds)

    def end(self) -> dict[str, float]:
        """Percent of one core per group since begin(), and "machine": every core together
        (at most 100 times the number of cores)."""
        self.sample()
        end = self.last_seen
        elapsed = self.elapsed = time.monotonic() - self.start_time
        percents = {}
        for group, seconds in end.items():
            before = self.start.get(group, {})
            used = sum(s - before.get(key, 0.0) for key, s in seconds.items())
            percents[group] = round(100 * used / elapsed, 1)
        percents["machine"] = round(100 * (self._machine_busy() - self.start_machine) / elapsed, 1)
        return percents

    def exited_group(self, group: str, total_seconds: float) -> float:
        """Percent of one core of a group whose processes ended before end() could read them
        (wrk exits as the window ends): its total CPU seconds, less what begin() saw."""
        before = sum(self.start.get(group, {}).values())
        return round(100 * (total_seconds - before) / self.elapsed, 1) if self.elapsed else 0.0


def children_cpu_seconds() -> float:
    """CPU seconds of this process's children that have ended and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# Memory ----------------------------------------------------------------------------------------


def rss_mib(pids: dict[str, int]) -> dict[str, float]:
    """Resident set size of each process now, in MiB; a process that is gone is left out."""
    found = {}
    for name, pid in pids.items():
        try:
            found[name] = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def rss_figures(
    start: dict[str, float], end: dict[str, float], during: Iterable[dict[str, float]]
) -> dict[str, dict[str, float | None]]:
    """Per process: RSS at the start of the window, at its end, the max seen (the per-second
    samples and both ends), and the change end vs start in percent; "flat" is judged on that
    change, not on the max, which start-up allocations or a GC cycle can make jumpy."""
    seen: dict[str, list[float]] = {name: [value] for name, value in start.items()}
    for sample in during:
        for name, value in sample.items():
            seen.setdefault(name, []).append(value)
    for name, value in end.items():
        seen.setdefault(name, []).append(value)
    figures: dict[str, dict[str, float | None]] = {}
    for name, values in seen.items():
        first, last = start.get(name), end.get(name)
        change = round(100 * (last - first) / first, 1) if first and last is not None else None
        figures[name] = {"start": first, "end": last, "max": max(values), "change_percent": change}
    return figures


# The latency placed->final of the final orders placed in the window [$1, $2) and inside (or, $5
# false, outside) the part of it [$3, $4): what a purge running then did to the orders.
LATENCY_INSIDE_OR_OUTSIDE = """
SELECT count(*) AS orders,
       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY ms) AS pct,
       max(ms) AS max
FROM (SELECT extract(epoch FROM updated_at - created_at) * 1000 AS ms
      FROM orders
      WHERE created_at >= $1 AND created_at < $2 AND status = ANY($6::text[])
        AND (created_at >= $3 AND created_at < $4) = $5) AS final
"""


async def latency_between(
    pool: asyncpg.Pool,
    window_start: datetime,
    window_end: datetime,
    part_start: datetime,
    part_end: datetime,
    inside: bool,
) -> dict[str, Any]:
    """p50, p99 and max in ms of the window's orders placed inside (or outside) a part of it."""
    row = await pool.fetchrow(
        LATENCY_INSIDE_OR_OUTSIDE, window_start, window_end, part_start, part_end, inside, FINALS
    )
    assert row is not None
    pct = row["pct"] or [None, None]

    def ms(value: Any) -> float | None:
        return None if value is None else round(float(value), 2)

    return {"orders": row["orders"], "p50": ms(pct[0]), "p99": ms(pct[1]), "max": ms(row["max"])}
