"""The benchmark's results: a summary table on stdout and everything in a JSON file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _num(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}"


def _pct(part: float | None, whole: float | None) -> str:
    if not part or not whole:
        return "n/a"
    return f"{100 * part / whole:.1f}%"


def _rss_row(memory: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """start -> end of the window, its max, and the change end vs start (what "flat" means)."""
    parts = []
    for name, rss in memory.items():
        change = rss["change_percent"]
        shown = "n/a" if change is None else f"{change:+.1f}%"
        parts.append(
            f"{name} {_num(rss['start'])}->{_num(rss['end'])} (max {_num(rss['max'])}, {shown})"
        )
    return ("RSS, MiB", "  ".join(parts))


def _table(title: str, rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join([title, *(f"  {name:<{width}}  {value}" for name, value in rows)])


def drain_summary(result: dict[str, Any]) -> str:
    """The table printed at the end of a --drain run."""
    figures = result["figures"]
    queue = result.get("queue") or {}
    rows: list[tuple[str, str]] = [
        ("backlog", f"{figures['events']:,} NEW rows, inserted in {figures['insert_seconds']} s"),
        (
            "published",
            f"{figures['published_events']:,} in {_num(figures['publish_seconds'], ' s', 2)} "
            f"(first to last published_at)",
        ),
        ("events/s", f"{_num(figures['events_per_second'])} (N / first to last published_at)"),
        (
            "events/s, wall",
            f"{_num(figures['events_per_second_wall'])} "
            f"(N / {_num(figures['wall_seconds'], ' s', 2)} from the publisher's start, "
            f"{figures['publisher_ready_seconds']} s to ready)",
        ),
    ]
    if queue:
        verdict = "ok" if queue["ok"] else "MISMATCH"
        rows.append(
            (
                "queue",
                f"{queue['name']} holds {queue['messages']:,} of {queue['expected']:,}: {verdict}",
            )
        )
    rows.extend(_process_rows(result))
    broker = (result.get("ceilings") or {}).get("broker")
    if broker is not None:
        drained = figures["events_per_second"]
        rows.append(
            _ceiling_row(
                "ceiling: broker only",
                broker,
                lambda c: (
                    f"{_num(c['messages_per_second'])} messages/s; "
                    f"drain = {_pct(drained, c['messages_per_second'])} of it"
                ),
            )
        )
    if "error" in result:
        rows.append(("ERROR", result["error"]))
    return _table(f"acme-orders bench ({result['mode']}), {result['started_at']}", rows)


def summary(result: dict[str, Any]) -> str:
    """The table printed at the end of a run."""
    if result["mode"] == "publisher drain":
        return drain_summary(result)
    options = result["options"]
    figures = result["figures"]
    load = result["load"]
    latency = figures["latency_ms"]
    offered = f"{options['rate']:g} orders/s" if options["rate"] else "flat out"
    rows: list[tuple[str, str]] = [
        ("offered load", f"{offered}, {load['threads']} wrk thread(s), {load['connections']} conn"),
        (
            "steady window",
            f"{figures['window_seconds']:.1f} s after a {options['warmup']:g} s warm-up",
        ),
        (
            "accepted at the API",
            f"{_num(figures['accepted_per_second'])} orders/s ({figures['accepted_orders']:,})",
        ),
        (
            "end to end (final)",
            f"{_num(figures['end_to_end_per_second'])} orders/s ({figures['finished_orders']:,})",
        ),
        (
            "latency placed->final",
            f"p50 {_num(latency['p50'], ' ms')}  p90 {_num(latency['p90'], ' ms')}  "
            f"p99 {_num(latency['p99'], ' ms')}  max {_num(latency['max'], ' ms')}  "
            f"({latency['orders']:,} orders)",
        ),
        ("publisher", f"{_num(figures['publisher_events_per_second'])} events/s"),
        ("outbox backlog", f"max {figures['backlog_max']:,} NEW rows"),
        (
            "not finished",
            f"{figures['unfinished_orders']:,} orders after waiting "
            f"{figures['drain_seconds']:.1f} s",
        ),
        (
            "final statuses",
            ", ".join(f"{status} {n:,}" for status, n in figures["statuses"].items()) or "none",
        ),
        (
            "HTTP (wrk's view)",
            f"{load['requests']:,} requests, {sum(load['errors'].values()):,} errors, "
            f"p50 {_num(load['http_latency_ms']['p50'], ' ms')}, "
            f"p99 {_num(load['http_latency_ms']['p99'], ' ms')}",
        ),
    ]
    rows.extend(_process_rows(result))
    e2e = figures["end_to_end_per_second"]
    pipeline_cpu = sum(
        percent
        for process, percent in (result.get("cpu_percent_of_one_core") or {}).items()
        if process not in NOT_THE_PIPELINE
    )
    if pipeline_cpu and e2e:
        # A percent of one core is 10 ms of CPU per second.
        rows.append(
            (
                "CPU per order",
                f"{pipeline_cpu * 10 / e2e:.2f} ms (services, PostgreSQL and RabbitMQ together)",
            )
        )
    ceilings = result.get("ceilings") or {}
    database = ceilings.get("database")
    if database is not None:
        rows.append(
            _ceiling_row(
                "ceiling: database only",
                database,
                lambda c: (
                    f"{_num(c['orders_per_second'])} orders/s (pgbench); "
                    f"pipeline = {_pct(e2e, c['orders_per_second'])} of it"
                ),
            )
        )
    broker = ceilings.get("broker")
    if broker is not None:
        rows.append(
            _ceiling_row(
                "ceiling: broker only",
                broker,
                lambda c: (
                    f"{_num(c['messages_per_second'])} messages/s = "
                    f"{_num(c['orders_per_second'])} orders/s; "
                    f"pipeline = {_pct(e2e, c['orders_per_second'])} of it"
                ),
            )
        )
    return _table(f"acme-orders bench ({result['mode']}), {result['started_at']}", rows)


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")


# Processes whose CPU is not the pipeline's own work: the load, the bench, and everything.
NOT_THE_PIPELINE = frozenset({"wrk", "bench", "machine"})


def _process_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The machine, and the CPU and memory of each process, when the run measured them."""
    rows = []
    machine = result.get("machine") or {}
    if machine:
        load = machine.get("load_average_at_start") or [None]
        rows.append(
            (
                "machine",
                f"{machine.get('cores')} cores, load average {load[0]} at start, RabbitMQ "
                f"busy-wait {machine.get('rabbitmq_busy_wait') or 'unknown'}",
            )
        )
    cpu = result.get("cpu_percent_of_one_core") or {}
    if cpu:
        rows.append(("CPU, % of one core", "  ".join(f"{k} {v:g}" for k, v in cpu.items())))
    if result.get("rss_mib"):
        rows.append(_rss_row(result["rss_mib"]))
    return rows


def _ceiling_row(
    name: str, ceiling: dict[str, Any], describe: Callable[[dict[str, Any]], str]
) -> tuple[str, str]:
    """A ceiling's figures, or why it could not be measured."""
    if "error" in ceiling:
        return (name, f"failed: {ceiling['error']}")
    return (name, describe(ceiling))
