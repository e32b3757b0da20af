"""The load: wrk running load.lua against POST /orders, flat out or at a fixed offered rate.

wrk is C and drives thousands of requests a second from a sliver of one core; a load generator in
Python would take one of the machine's two cores from the system it measures."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shutil
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RESULT_MARKER = "ACME_BENCH_RESULT "
# A request slower than this counts as a wrk timeout error, not as a latency.
REQUEST_TIMEOUT_SECONDS = 10


class WrkMissingError(RuntimeError):
    def __init__(self) -> None:
        super().__init__("wrk is not installed; install it: apt-get install wrk")


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissingError
    return path


def script_file() -> AbstractContextManager[Path]:
    """load.lua as a real file (wrk needs a path), from the installed package or the source tree
    of an editable install alike."""
    return resources.as_file(resources.files("acme_orders_bench").joinpath("load.lua"))


def default_connections(rate: float | None) -> int:
    """Enough open connections to take every slot at `rate`: each one can carry 10 orders a
    second while an order takes up to 100 ms to place. A slot that finds no connection free is
    lost, so too few would offer less than `rate` (at 500/s, 20 of them carried 375/s while the
    API's p90 was 73 ms). Flat out, 32 keep the API busy."""
    if rate is None:
        return 32
    return max(8, math.ceil(rate / 10))


@dataclass(frozen=True, slots=True)
class LoadPlan:
    url: str
    seconds: float
    rate: float | None  # orders/s over all threads; None is flat out
    threads: int
    connections: int


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What wrk itself counted (the figures of the benchmark come from the database)."""

    requests: int
    seconds: float
    errors: dict[str, int]
    latency_ms: dict[str, float]

    @property
    def sent_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "sent_per_second": round(self.sent_per_second, 1),
            "errors": self.errors,
            "http_latency_ms": self.latency_ms,
        }


def wrk_command(plan: LoadPlan, script: Path, skus: list[str]) -> list[str]:
    return [
        wrk_path(),
        f"--threads={plan.threads}",
        f"--connections={plan.connections}",
        f"--duration={max(1, round(plan.seconds))}s",
        f"--timeout={REQUEST_TIMEOUT_SECONDS}s",
        f"--script={script}",
        plan.url.rstrip("/") + "/orders",
        "--",
        str(plan.rate or 0),
        str(plan.threads),
        ",".join(skus),
    ]


async def start_wrk(plan: LoadPlan, script: Path, skus: list[str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *wrk_command(plan, script, skus),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish_wrk(process: asyncio.subprocess.Process) -> LoadResult:
    """Wait for wrk to end and read its counts from the line load.lua's done() prints."""
    stdout, stderr = await process.communicate()
    text = stdout.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith(RESULT_MARKER)), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed (exit code {process.returncode}):\n{text}{stderr.decode(errors='replace')}"
        )
    raw = json.loads(line.removeprefix(RESULT_MARKER))
    return LoadResult(
        requests=int(raw["requests"]),
        seconds=raw["duration_us"] / 1e6,
        errors={name: int(n) for name, n in raw["errors"].items()},
        latency_ms={name: round(us / 1000, 2) for name, us in raw["latency_us"].items()},
    )
