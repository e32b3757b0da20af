"""The bench's write-ahead log figures: what was written between two readings of the server's
counters, per order accepted in between."""

from __future__ import annotations

from acme_orders_bench.measure import wal_figures

START = {
    "wal_records": 1_000,
    "wal_fpi": 10,
    "wal_bytes": 500_000,
    "checkpoints_timed": 3,
    "checkpoints_req": 1,
}


def test_the_wal_written_in_the_window_is_divided_by_the_orders_accepted_in_it() -> None:
    end = {
        "wal_records": 31_000,
        "wal_fpi": 1_510,
        "wal_bytes": 20_500_000,
        "checkpoints_timed": 3,
        "checkpoints_req": 2,
    }
    assert wal_figures(START, end, orders=2_000) == {
        "bytes": 20_000_000,
        "records": 30_000,
        "full_page_images": 1_500,
        "bytes_per_order": 10_000.0,
        "full_page_images_per_order": 0.8,
        "checkpoints_timed": 0,
        "checkpoints_requested": 1,
    }


def test_a_window_without_orders_has_no_figure_per_order() -> None:
    figures = wal_figures(START, START, orders=0)
    assert figures["bytes_per_order"] is None
    assert figures["full_page_images_per_order"] is None
    assert figures["bytes"] == 0
