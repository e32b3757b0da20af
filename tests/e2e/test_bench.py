"""`acme-orders bench` end to end: the real console script brings a fresh system up, loads it
with wrk, measures, and removes its database and vhost. It checks that a run completes and
reports every figure, not how fast the system is."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from acme_orders.core.topology import consumers_of
from acme_orders_bench import history
from tests.support.environment import (
    ADMIN_DATABASE_URL,
    RABBITMQCTL,
    TestEnvironment,
    rabbitmqctl,
)
from tests.support.processes import ACME_ORDERS, acme_orders

pytestmark = pytest.mark.e2e


async def test_bench_measures_a_fresh_system_and_removes_it(tmp_path: Path) -> None:
    run, result = await bench(
        tmp_path,
        "--rate",
        "50",
        "--duration",
        "3",
        "--warmup",
        "1",
        "--ceiling-seconds",
        "1",
        ceilings=True,
        within=120,
    )

    assert "end to end" in run.stdout
    assert "ceiling: database only" in run.stdout
    figures = result["figures"]
    assert figures["accepted_per_second"] > 0
    assert figures["end_to_end_per_second"] > 0
    assert figures["publisher_events_per_second"] > 0
    assert figures["unfinished_orders"] == 0
    latency = figures["latency_ms"]
    assert all(latency[p] is not None and latency[p] > 0 for p in ("p50", "p90", "p99", "max"))
    assert result["series"], "no backlog samples"
    # Every order writes WAL; the server's counters are read at the window's edges.
    assert figures["wal"]["bytes_per_order"] > 0
    assert figures["wal"]["records"] > 0
    assert result["machine"]["postgresql_settings"]["synchronous_commit"] == "on"
    assert result["machine"]["python_loop_seconds"] > 0
    assert result["cpu_percent_of_one_core"]["api"] > 0
    assert "RSS, MiB" in run.stdout
    assert set(result["rss_mib"]) == {"api", "publisher", "inventory", "payment", "notification"}
    for rss in result["rss_mib"].values():
        assert rss["start"] > 0
        assert rss["end"] > 0
        assert rss["max"] >= max(rss["start"], rss["end"])
        assert rss["change_percent"] is not None
    assert all(sample["rss_mib"] for sample in result["series"])
    assert result["ceilings"]["database"]["orders_per_second"] > 0
    assert result["ceilings"]["broker"]["orders_per_second"] > 0

    await assert_removed(result["system"]["database"])


async def test_bench_drain_measures_the_publisher_alone_and_removes_it(tmp_path: Path) -> None:
    _, result = await bench(tmp_path, "--drain", "2000", within=120)

    assert result["mode"] == "publisher drain"
    figures = result["figures"]
    assert figures["drained"]
    assert figures["published_events"] == 2000
    assert figures["events_per_second"] > 0
    assert figures["events_per_second_wall"] > 0
    assert result["queue"] == {
        "name": "bench.drain",
        "messages": 2000,
        "expected": 2000,
        "ok": True,
    }
    assert "error" not in result
    assert result["cpu_percent_of_one_core"]["publisher"] > 0
    assert result["rss_mib"]["publisher"]["max"] > 0
    assert list(result["system"]["exit_codes"]) == ["publisher"]
    await assert_removed(result["system"]["database"])


async def test_bench_drain_refuses_a_rate() -> None:
    run = await acme_orders(None, "bench", "--drain", "10", "--rate", "50")

    assert run.returncode == 2
    assert "--drain cannot be combined with --rate or --attach" in run.stderr


async def bench(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ceilings: bool = False,
    within: float = 180,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`acme-orders bench ARGS...` (with `--no-ceilings` unless `ceilings`), which must succeed;
    what it printed, and its JSON results. `within`: seconds before the run is killed."""
    output = tmp_path / "bench.json"
    run = await asyncio.to_thread(
        subprocess.run,
        [
            str(ACME_ORDERS),
            "bench",
            *args,
            *([] if ceilings else ["--no-ceilings"]),
            "--output",
            str(output),
            "--rabbitmqctl",
            shlex.join(RABBITMQCTL),
        ],
        capture_output=True,
        text=True,
        timeout=within,
        check=False,
        env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run, json.loads(output.read_text())


async def test_bench_sweep_measures_each_rate_on_one_system_and_charts_it(tmp_path: Path) -> None:
    run, result = await bench(
        tmp_path, "--sweep", "20,40", "--duration", "2", "--warmup", "1", "--history", "500"
    )

    assert result["mode"] == "sweep"
    assert [step["offered"] for step in result["steps"]] == [20.0, 40.0]
    for step in result["steps"]:
        figures = step["figures"]
        assert figures["end_to_end_per_second"] > 0
        assert figures["unfinished_orders"] == 0
        assert figures["latency_ms"]["p99"] > 0
        assert step["cpu_percent_of_one_core"]["api"] > 0
    # One system for every step: the second counts only its own orders.
    assert result["steps"][1]["figures"]["accepted_orders"] < 40 * 4
    assert "offered  taken/s" in run.stdout
    # The history came first, and is not counted as the steps' orders.
    assert result["history"]["rows"]["orders"] == 500
    chart = Path(result["chart"]["path"])
    assert chart == tmp_path / "bench.png"
    assert (await asyncio.to_thread(chart.read_bytes)).startswith(b"\x89PNG")
    await assert_removed(result["system"]["database"])


async def test_bench_purge_in_the_window_is_timed_beside_the_latency(tmp_path: Path) -> None:
    _, result = await bench(
        tmp_path,
        "--rate",
        "20",
        "--duration",
        "3",
        "--warmup",
        "1",
        "--history",
        "2000",
        "--purge",
        "--quiet",
        # The purge deletes one interval's worth: a day of the history's 30 days.
        env=os.environ | {"HOUSEKEEPING_INTERVAL": "86400"},
    )

    purge = result["purge"]
    assert purge["seconds"] > 0
    assert set(purge["deleted"]) == {"event_outbox", "processed_events", "idempotency_keys"}
    assert all(n > 0 for n in purge["deleted"].values()), purge["deleted"]
    assert (
        purge["latency_during_ms"]["orders"] + purge["latency_outside_ms"]["orders"]
        == (result["figures"]["latency_ms"]["orders"])
    )
    assert result["figures"]["unfinished_orders"] == 0


async def assert_removed(name: str) -> None:
    """The run's database and vhost are gone."""
    admin = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        assert not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await admin.close()
    assert name not in (await asyncio.to_thread(rabbitmqctl, "list_vhosts", "name")).split()


async def test_history_prefill_leaves_what_finished_orders_leave(
    fresh_env: TestEnvironment, fresh_pool: asyncpg.Pool
) -> None:
    settings = fresh_env.settings()
    stock_before = await fresh_pool.fetch("SELECT sku, stock_qty FROM products ORDER BY sku")

    found = await history.prefill(fresh_env.database_url, settings, 2000, 30, lambda _: None, 700)

    assert found["rows"]["orders"] == 2000
    row = await fresh_pool.fetchrow(
        """
        SELECT
          (SELECT count(*) FROM orders WHERE status NOT IN ('paid', 'payment_failed')) AS unfinal,
          (SELECT count(*) FROM orders WHERE status = 'payment_failed') AS failed,
          (SELECT count(*) FROM orders o WHERE o.created_at < now() - interval '29 days') AS old,
          (SELECT count(*) FROM orders o WHERE o.total <> (
              SELECT sum(qty * unit_price) FROM order_items i WHERE i.order_id = o.id))
            AS bad_total,
          (SELECT count(*) FROM orders o WHERE (
              SELECT count(*) FROM notifications n WHERE n.order_id = o.id
              AND n.kind = CASE o.status WHEN 'paid' THEN 'order_paid'
                                         ELSE 'payment_failed' END) <> 1) AS not_notified_once,
          (SELECT count(*) FROM notifications) AS notifications,
          (SELECT count(*) FROM orders o JOIN payments p ON p.order_id = o.id
           WHERE p.amount = o.total AND p.outcome = CASE o.status WHEN 'paid' THEN 'completed'
                                                             ELSE 'failed' END) AS paid_right,
          (SELECT count(*) FROM order_items i LEFT JOIN stock_reservations r USING (order_id, sku)
           JOIN orders o ON o.id = i.order_id
           WHERE r.qty IS DISTINCT FROM i.qty
              OR r.status <> CASE o.status WHEN 'paid' THEN 'reserved' ELSE 'released' END)
            AS bad_reservations,
          (SELECT count(*) FROM event_outbox WHERE status <> 'SENT') AS unsent,
          (SELECT count(*) FROM event_outbox
           WHERE published_at < now() - $1::interval) AS sent_past_retention,
          (SELECT count(*) FROM idempotency_keys
           WHERE created_at < now() - $2::interval) AS keys_past_retention,
          (SELECT count(*) FROM idempotency_keys) AS keys
        """,
        settings.outbox_retention,
        settings.idempotency_key_retention,
    )
    assert row is not None
    assert row["unfinal"] == 0
    assert row["failed"] == 2000 // history.PAYMENT_FAILED_EVERY
    assert row["old"] > 0, "spread over the 30 days"
    assert row["bad_total"] == 0
    assert row["not_notified_once"] == 0
    assert row["notifications"] == 2000
    assert row["paid_right"] == 2000
    assert row["bad_reservations"] == 0
    assert row["unsent"] == 0
    assert row["sent_past_retention"] == 0
    assert row["keys_past_retention"] == 0
    assert 0 < row["keys"] < 2000
    # The ids are UUIDv7 of the moment each order was placed and each event written (to the
    # millisecond), as the system makes them: the history's indexes are ordered as a real one's.
    ids = await fresh_pool.fetch(
        """
        SELECT id, created_at FROM orders
        UNION ALL SELECT event_id, created_at FROM event_outbox
        """
    )
    assert {r["id"].version for r in ids} == {7}
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert all(
        r["id"].int >> 80 == (r["created_at"] - epoch) // timedelta(milliseconds=1) for r in ids
    )
    # Every SENT event of the outbox was handled once by every consumer its routing key reaches,
    # and each order's life is whole: paid 3 events, payment_failed 4.
    sent = await fresh_pool.fetch(
        """
        SELECT e.event_type, e.routing_key, count(p.service) AS handled,
               array_agg(DISTINCT p.service) FILTER (WHERE p.service IS NOT NULL) AS services
        FROM event_outbox e LEFT JOIN processed_events p ON p.event_id = e.event_id
        GROUP BY e.event_id, e.event_type, e.routing_key
        """
    )
    assert sent
    for event in sent:
        assert sorted(event["services"] or []) == sorted(consumers_of(event["routing_key"])), event
    lives = await fresh_pool.fetch(
        """
        SELECT o.status, count(*) AS events FROM event_outbox e JOIN orders o ON o.id = e.order_id
        GROUP BY o.id, o.status
        """
    )
    assert {(r["status"], r["events"]) for r in lives} <= {("paid", 3), ("payment_failed", 4)}
    # The stock is the catalogue's: the history's paid orders hold what a larger start stock had.
    assert await fresh_pool.fetch("SELECT sku, stock_qty FROM products ORDER BY sku") == (
        stock_before
    )
