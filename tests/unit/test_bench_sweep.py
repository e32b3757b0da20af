"""The benchmark's sweep, progress lines and history plan: the pure parts."""

from __future__ import annotations

import io
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from acme_orders.core.settings import Settings
from acme_orders_bench import history, progress, sweep


def step(offered: float | None, taken: float, p50: float, p99: float) -> dict[str, Any]:
    return {
        "offered": offered,
        "figures": {
            "end_to_end_per_second": taken,
            "accepted_per_second": taken,
            "latency_ms": {"p50": p50, "p90": p99, "p99": p99, "max": p99},
            "unfinished_orders": 0,
            "wal": {"bytes_per_order": 10_450.0},
        },
        "load": {"sent_per_second": taken + 1, "errors": {"status": 2, "timeout": 1}},
        "cpu_percent_of_one_core": {"api": 50.0, "postgresql": 50.0, "wrk": 10.0, "machine": 120},
    }


STEPS = [step(100.0, 100.0, 9.5, 25.0), step(500.0, 468.0, 40.0, 146.0), step(None, 630, 80, 300)]


def test_sweep_rates_rise_and_end_flat_out() -> None:
    assert sweep.parse_rates("100, 250,500,flat") == (100.0, 250.0, 500.0, None)
    assert sweep.parse_rates("50,75.5") == (50.0, 75.5)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("250,100", "must rise"),
        ("100,100", "must rise"),
        ("flat,100", "only be the last"),
        ("100", "at least two"),
        ("100,,200", "empty step"),
        ("100,fast", "neither a rate"),
        ("0,100", "above 0"),
    ],
)
def test_sweep_rates_refuse_what_is_no_curve(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        sweep.parse_rates(text)


def test_sweep_table_has_a_line_per_step_with_its_figures() -> None:
    lines = sweep.table(STEPS).splitlines()

    assert lines[0].split() == [
        "offered", "taken/s", "accepted/s", "p50", "ms", "p99", "ms", "errors", "unfinished",
        "CPU", "ms", "WAL", "kB",
    ]  # fmt: skip
    # CPU per order: services and servers (100 % of one core = 1 s/s) over the taken rate.
    assert lines[1].split() == [
        "100/s", "100.0", "100.0", "9.5", "25.0", "3", "0", "10.00", "10.4",
    ]  # fmt: skip
    assert lines[2].split()[:5] == ["500/s", "468.0", "468.0", "40.0", "146.0"]
    assert lines[3].split()[:3] == ["flat", "out", "630"]


def test_sweep_chart_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    chart = tmp_path / "charts" / "sweep.png"

    sweep.write_chart(STEPS, chart, "test sweep")

    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_sweep_chart_without_matplotlib_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails

    with pytest.raises(sweep.ChartUnavailableError, match=r"pip install './bench\[chart\]'"):
        sweep.write_chart(STEPS, tmp_path / "sweep.png", "test sweep")
    assert not (tmp_path / "sweep.png").exists()


def test_sweep_summary_heads_the_table_with_the_run() -> None:
    result = {
        "mode": "sweep",
        "started_at": "2026-12-01T12:00:00+00:00",
        "options": {"warmup": 2.0, "duration": 30.0},
        "steps": STEPS,
        "chart": {"skipped": sweep.CHART_MISSING},
    }

    text = sweep.summary(result)

    assert "3, each 2 s warm-up + 30 s measured" in text
    assert "chart skipped: matplotlib is not installed" in text
    assert text.splitlines()[-1].split()[:2] == ["flat", "out"]


def test_next_purge_deletes_one_interval_of_each_retention() -> None:
    settings = Settings(housekeeping_interval=3600)

    purge = history.next_purge(settings)

    assert purge.outbox_retention == settings.outbox_retention - timedelta(hours=1)
    assert purge.processed_events_retention == (
        settings.processed_events_retention - timedelta(hours=1)
    )
    assert purge.idempotency_key_retention == timedelta(hours=23)
    assert history.next_purge(Settings(housekeeping_interval=90000)).idempotency_key_retention == (
        timedelta(0)
    )


def test_load_progress_line() -> None:
    line = progress.load_line("step 2/3 250/s: ", 15.2, 32, 3750, 249.6, 3700, 12)

    assert (
        line == "step 2/3 250/s:    15/32 s  accepted 3,750 (250/s)  final 3,700  outbox backlog 12"
    )
    assert "(n/a)" in progress.load_line("", 0, 10, 0, None, 0, 0)


def test_drain_progress_line() -> None:
    line = progress.drain_line(5.0, 60_000, 100_000, 12_000.4)

    assert line == "drain     5 s  published 60,000 of 100,000 (12,000/s)"


def test_reporter_prints_every_few_seconds_the_rate_since_the_last_line() -> None:
    out = io.StringIO()
    reporter = progress.Reporter(enabled=True, stream=out, every=5)

    assert not reporter.due(4.0)
    assert reporter.due(5.0)
    assert reporter.rate(5.0, 1000) == 200.0
    assert not reporter.due(9.0)
    assert reporter.due(10.0)
    assert reporter.rate(10.0, 2500) == 300.0
    reporter.line("a line")
    reporter.restart()
    assert reporter.rate(5.0, 500) == 100.0
    assert out.getvalue() == "a line\n"


def test_reporter_is_quiet_when_disabled() -> None:
    out = io.StringIO()
    reporter = progress.Reporter(enabled=False, stream=out)

    assert not reporter.due(100.0)
    reporter.line("a line")
    assert out.getvalue() == ""


def test_history_batches_cover_every_order_once() -> None:
    assert history.batches(250_001, 100_000) == [
        (1, 100_000),
        (100_001, 200_000),
        (200_001, 250_001),
    ]
    assert history.batches(5, 100) == [(1, 5)]
    with pytest.raises(ValueError, match="at least one order"):
        history.batches(0)


def test_history_leaves_the_processed_events_the_bindings_route() -> None:
    pairs = set(zip(*history.handled_by(), strict=True))

    assert pairs == {
        ("OrderPlaced", "inventory"),
        ("InventoryReserved", "payment"),
        ("PaymentCompleted", "notification"),
        ("PaymentFailed", "inventory"),
        ("PaymentFailed", "notification"),
    }


def test_history_life_arrays_line_up() -> None:
    statuses, types, keys, offsets = history.life_arrays()

    assert len(statuses) == len(types) == len(keys) == len(offsets) == len(history.LIFE)
    assert types[statuses.index("paid")] == "OrderPlaced"
    assert "order.placed" in keys
