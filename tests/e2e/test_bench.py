"""`acme-orders bench` end to end: the real console script brings a fresh system up, loads it
with wrk, measures, and removes its database and vhost. It checks that a run completes and
reports every figure, not how fast the system is."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
from pathlib import Path

import asyncpg
import pytest

from tests.support.environment import ADMIN_DATABASE_URL, RABBITMQCTL, rabbitmqctl
from tests.support.processes import ACME_ORDERS, acme_orders

pytestmark = pytest.mark.e2e


async def test_bench_measures_a_fresh_system_and_removes_it(tmp_path: Path) -> None:
    output = tmp_path / "b.json"

    run = await asyncio.to_thread(
        subprocess.run,
        [
            str(ACME_ORDERS),
            "bench",
            "--rate",
            "50",
            "--duration",
            "3",
            "--warmup",
            "1",
            "--ceiling-seconds",
            "1",
            "--output",
            str(output),
            "--rabbitmqctl",
            shlex.join(RABBITMQCTL),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "end to end" in run.stdout
    assert "ceiling: database only" in run.stdout
    result = json.loads(output.read_text())
    figures = result["figures"]
    assert figures["accepted_per_second"] > 0
    assert figures["end_to_end_per_second"] > 0
    assert figures["publisher_events_per_second"] > 0
    assert figures["unfinished_orders"] == 0
    latency = figures["latency_ms"]
    assert all(latency[p] is not None and latency[p] > 0 for p in ("p50", "p90", "p99", "max"))
    assert result["series"], "no backlog samples"
    assert result["machine"]["postgresql_settings"]["synchronous_commit"] == "on"
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
    output = tmp_path / "d.json"

    run = await asyncio.to_thread(
        subprocess.run,
        [
            str(ACME_ORDERS),
            "bench",
            "--drain",
            "2000",
            "--no-ceilings",
            "--output",
            str(output),
            "--rabbitmqctl",
            shlex.join(RABBITMQCTL),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(output.read_text())
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


async def assert_removed(name: str) -> None:
    """The run's database and vhost are gone."""
    admin = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        assert not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await admin.close()
    assert name not in (await asyncio.to_thread(rabbitmqctl, "list_vhosts", "name")).split()
