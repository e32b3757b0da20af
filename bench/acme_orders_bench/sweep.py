"""`bench --sweep`: the latency curve. Offered rates from low to past saturation, one after the
other against the same system, each with its own warm-up and window; a table of what each step
took and how long its orders took, and a PNG chart of it (matplotlib, the bench's optional extra
`chart`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from acme_orders_bench import report

# The word for a step with no rate limit, as in --sweep 100,250,500,flat.
FLAT_OUT = "flat"
CHART_MISSING = (
    "chart skipped: matplotlib is not installed; pip install './bench[chart]' (the bench's "
    "extra `chart`) to get it"
)


def parse_rates(text: str) -> tuple[float | None, ...]:
    """`100,250,500,flat` -> (100.0, 250.0, 500.0, None): rates in orders/s, rising, and `flat`
    (flat out, None) only last."""
    steps: list[float | None] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ValueError(f"--sweep {text!r}: an empty step")
        if part.lower() == FLAT_OUT:
            steps.append(None)
            continue
        try:
            rate = float(part)
        except ValueError:
            raise ValueError(
                f"--sweep {text!r}: {part!r} is neither a rate in orders/s nor {FLAT_OUT!r}"
            ) from None
        if rate <= 0:
            raise ValueError(f"--sweep {text!r}: a rate must be above 0, not {part}")
        steps.append(rate)
    rates = [r for r in steps if r is not None]
    if None in steps[:-1]:
        raise ValueError(f"--sweep {text!r}: {FLAT_OUT!r} can only be the last step")
    if rates != sorted(set(rates)):
        raise ValueError(f"--sweep {text!r}: the rates must rise, each once")
    if len(steps) < 2:
        raise ValueError(f"--sweep {text!r}: a sweep needs at least two steps")
    return tuple(steps)


def offered_label(rate: float | None) -> str:
    return FLAT_OUT + " out" if rate is None else f"{rate:g}/s"


def step_row(step: dict[str, Any]) -> dict[str, Any]:
    """The figures of one step that the table and the chart show."""
    figures, load = step["figures"], step["load"]
    taken = figures["end_to_end_per_second"]
    return {
        "offered": step["offered"],
        # Flat out has no offered rate: the chart places it at what wrk managed to send.
        "sent": load["sent_per_second"],
        "accepted": figures["accepted_per_second"],
        "taken": taken,
        "p50": figures["latency_ms"]["p50"],
        "p99": figures["latency_ms"]["p99"],
        "errors": sum(load["errors"].values()),
        "unfinished": figures["unfinished_orders"],
        "cpu_ms_per_order": report.cpu_ms_per_order(step.get("cpu_percent_of_one_core"), taken),
        "wal_kb_per_order": _kb(figures.get("wal", {}).get("bytes_per_order")),
    }


def _kb(count: float | None) -> float | None:
    return None if count is None else round(count / 1000, 1)


COLUMNS = (
    "offered",
    "taken/s",
    "accepted/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "unfinished",
    "CPU ms",
    "WAL kB",
)


def table(steps: Sequence[dict[str, Any]]) -> str:
    """The sweep's table, one line per step, in the order they ran."""
    rows = [COLUMNS]
    for step in steps:
        row = step_row(step)
        rows.append(
            (
                offered_label(row["offered"]),
                report.num(row["taken"]),
                report.num(row["accepted"]),
                report.num(row["p50"]),
                report.num(row["p99"]),
                f"{row['errors']:,}",
                f"{row['unfinished']:,}",
                report.num(row["cpu_ms_per_order"], digits=2),
                report.num(row["wal_kb_per_order"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  " + "  ".join(cell.rjust(width) for cell, width in zip(r, widths, strict=True))
        for r in rows
    )


class ChartUnavailableError(RuntimeError):
    def __init__(self) -> None:
        super().__init__(CHART_MISSING)


def write_chart(steps: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """p50 and p99 latency (left axis, ms, log scale) and the taken rate (right axis, orders/s)
    against the offered rate, as a PNG at `path`. Raises ChartUnavailableError without
    matplotlib."""
    try:
        import matplotlib

        # No display: the Agg backend renders to files only, and must be chosen before pyplot.
        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise ChartUnavailableError from None
    rows = [step_row(step) for step in steps]
    # The rated steps are a curve; flat out is a point of its own at the rate wrk sent, marked
    # and not joined to the curve (it may lie anywhere along it).
    rated = [row for row in rows if row["offered"] is not None]
    flat = [row for row in rows if row["offered"] is None]
    figure, latency_axis = pyplot.subplots(figsize=(8, 5), dpi=100)
    try:
        rate_axis = latency_axis.twinx()
        for axis, key, marker, color, label in (
            (latency_axis, "p50", "o", "tab:blue", "p50 placed→final"),
            (latency_axis, "p99", "s", "tab:orange", "p99 placed→final"),
            (rate_axis, "taken", "^", "tab:green", "taken"),
        ):
            axis.plot(
                [row["offered"] for row in rated],
                [row[key] for row in rated],
                marker=marker,
                linestyle="--" if axis is rate_axis else "-",
                color=color,
                label=label,
            )
            axis.plot(
                [row["sent"] for row in flat],
                [row[key] for row in flat],
                marker=marker,
                markersize=11,
                markerfacecolor="none",
                linestyle="none",
                color=color,
            )
        latency_axis.set_xlabel("offered orders/s (flat out, hollow: what wrk sent)")
        latency_axis.set_ylabel("latency, ms")
        if all(r["p50"] and r["p99"] for r in rows):
            latency_axis.set_yscale("log")
        latency_axis.grid(True, which="both", alpha=0.3)
        offered = [row["offered"] for row in rated] + [row["sent"] for row in flat]
        top = max(offered + [r["taken"] for r in rows])
        rate_axis.plot([0, top], [0, top], ":", color="grey", label="taken = offered")
        rate_axis.set_ylabel("taken (finished) orders/s")
        for row in flat:
            rate_axis.annotate(
                "flat out", (row["sent"], row["taken"]), textcoords="offset points", xytext=(8, 8)
            )
        handles = latency_axis.get_legend_handles_labels()
        more = rate_axis.get_legend_handles_labels()
        latency_axis.legend(handles[0] + more[0], handles[1] + more[1], loc="best")
        latency_axis.set_title(title)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png")
    finally:
        pyplot.close(figure)
    return path


def summary(result: dict[str, Any]) -> str:
    """The table printed at the end of a --sweep run."""
    options = result["options"]
    rows: list[tuple[str, str]] = [
        (
            "steps",
            f"{len(result['steps'])}, each {options['warmup']:g} s warm-up + "
            f"{options['duration']:g} s measured",
        ),
    ]
    rows.extend(report.process_rows({"machine": result.get("machine")}))
    rows.extend(report.history_rows(result))
    chart = result.get("chart") or {}
    rows.append(("chart", chart.get("path") or chart.get("skipped") or "n/a"))
    head = report.table(f"acme-orders bench ({result['mode']}), {result['started_at']}", rows)
    return head + "\n" + table(result["steps"])
