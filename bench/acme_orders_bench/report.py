"""The benchmark's results: a summary table on stdout and everything in a JSON file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def num(value: Any, unit: str = "", digits: int = 1) -> str:
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
            f"{name} {num(rss['start'])}->{num(rss['end'])} (max {num(rss['max'])}, {shown})"
        )
    return ("RSS, MiB", "  ".join(parts))


def table(title: str, rows: list[tuple[str, str]]) -> str:
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
            f"{figures['published_events']:,} in {num(figures['publish_seconds'], ' s', 2)} "
            f"(first to last published_at)",
        ),
        ("events/s", f"{num(figures['events_per_second'])} (N / first to last published_at)"),
        (
            "events/s, wall",
            f"{num(figures['events_per_second_wall'])} "
            f"(N / {num(figures['wall_seconds'], ' s', 2)} from the publisher's start, "
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
    rows.extend(process_rows(result))
    broker = (result.get("ceilings") or {}).get("broker")
    if broker is not None:
        drained = figures["events_per_second"]
        rows.append(
            _ceiling_row(
                "ceiling: broker only",
                broker,
                lambda c: (
                    f"{num(c['messages_per_second'])} messages/s; "
                    f"drain = {_pct(drained, c['messages_per_second'])} of it"
                ),
            )
        )
    if "error" in result:
        rows.append(("ERROR", result["error"]))
    return table(f"acme-orders bench ({result['mode']}), {result['started_at']}", rows)


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
            f"{num(figures['accepted_per_second'])} orders/s ({figures['accepted_orders']:,})",
        ),
        (
            "end to end (final)",
            f"{num(figures['end_to_end_per_second'])} orders/s ({figures['finished_orders']:,})",
        ),
        (
            "latency placed->final",
            f"p50 {num(latency['p50'], ' ms')}  p90 {num(latency['p90'], ' ms')}  "
            f"p99 {num(latency['p99'], ' ms')}  max {num(latency['max'], ' ms')}  "
            f"({latency['orders']:,} orders)",
        ),
        ("publisher", f"{num(figures['publisher_events_per_second'])} events/s"),
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
            f"p50 {num(load['http_latency_ms']['p50'], ' ms')}, "
            f"p99 {num(load['http_latency_ms']['p99'], ' ms')}",
        ),
    ]
    rows.extend(process_rows(result))
    e2e = figures["end_to_end_per_second"]
    cpu_per_order = cpu_ms_per_order(result.get("cpu_percent_of_one_core"), e2e)
    if cpu_per_order is not None:
        rows.append(
            (
                "CPU per order",
                f"{cpu_per_order:.2f} ms (services, PostgreSQL and RabbitMQ together)",
            )
        )
    wal = figures.get("wal")
    if wal is not None:
        rows.append(
            (
                "write-ahead log",
                f"{num(wal['bytes_per_order'])} bytes and "
                f"{num(wal['full_page_images_per_order'])} full-page images per order "
                f"accepted; checkpoints {wal['checkpoints_requested']} requested, "
                f"{wal['checkpoints_timed']} timed (the whole server's)",
            )
        )
    rows.extend(history_rows(result))
    ceilings = result.get("ceilings") or {}
    database = ceilings.get("database")
    if database is not None:
        rows.append(
            _ceiling_row(
                "ceiling: database only",
                database,
                lambda c: (
                    f"{num(c['orders_per_second'])} orders/s (pgbench, batches of "
                    f"{c.get('batch', 1)}); "
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
                    f"{num(c['messages_per_second'])} messages/s = "
                    f"{num(c['orders_per_second'])} orders/s; "
                    f"pipeline = {_pct(e2e, c['orders_per_second'])} of it"
                ),
            )
        )
    return table(f"acme-orders bench ({result['mode']}), {result['started_at']}", rows)


def cpu_ms_per_order(
    cpu: dict[str, float] | None, finished_per_second: float | None
) -> float | None:
    """CPU ms per finished order of the pipeline's processes (services, PostgreSQL, RabbitMQ),
    when the run measured them: a percent of one core is 10 ms of CPU per second."""
    pipeline_cpu = sum(
        percent for process, percent in (cpu or {}).items() if process not in NOT_THE_PIPELINE
    )
    if not pipeline_cpu or not finished_per_second:
        return None
    return round(pipeline_cpu * 10 / finished_per_second, 3)


def history_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The prefilled history, and the purge run in the window, when the run had them."""
    rows = []
    history = result.get("history")
    if history:
        rows.append(
            (
                "history",
                f"{history['orders']:,} finished orders prefilled over {history['days']:g} days "
                f"in {history['seconds']:.0f} s; rows: "
                + ", ".join(f"{table} {n:,}" for table, n in history["rows"].items()),
            )
        )
    purge = result.get("purge")
    if purge:
        during, outside = purge["latency_during_ms"], purge["latency_outside_ms"]
        rows.append(
            (
                "purge in the window",
                f"{purge['seconds']:.2f} s, deleted "
                + ", ".join(f"{table} {n:,}" for table, n in purge["deleted"].items())
                + f"; p50/p99 during {num(during['p50'], ' ms')}/{num(during['p99'], ' ms')} "
                f"({during['orders']:,} orders), outside {num(outside['p50'], ' ms')}/"
                f"{num(outside['p99'], ' ms')} ({outside['orders']:,})",
            )
        )
    return rows


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")


# Processes whose CPU is not the pipeline's own work: the load, the bench, and everything.
NOT_THE_PIPELINE = frozenset({"wrk", "bench", "machine"})


def process_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The machine, and the CPU and memory of each process, when the run measured them."""
    rows = []
    machine = result.get("machine") or {}
    if machine:
        load = machine.get("load_average_at_start") or [None]
        rows.append(
            (
                "machine",
                f"{machine.get('cores')} cores, load average {load[0]} at start, RabbitMQ "
                f"busy-wait {machine.get('rabbitmq_busy_wait') or 'unknown'}, speed "
                f"{num(machine.get('python_loop_seconds'), ' s', 3)} (a fixed loop)",
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
