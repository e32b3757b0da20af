"""The bench's CPU meter counts the CPU of processes that end inside the window (PostgreSQL backends
of connections asyncpg replaced), with real processes."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from acme_orders_bench.measure import CpuMeter

BURN_SECONDS = 0.5
# Burns BURN_SECONDS of CPU, then waits for its stdin to close.
BURNER = (
    "import sys, time\n"
    f"end = time.process_time() + {BURN_SECONDS}\n"
    "while time.process_time() < end:\n"
    "    pass\n"
    "sys.stdin.read()\n"
)


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def test_a_process_that_ends_before_the_window_does_is_counted_to_its_last_sample() -> None:
    burner = subprocess.Popen([sys.executable, "-c", BURNER], stdin=subprocess.PIPE)
    assert burner.stdin is not None
    meter = CpuMeter(pids={"burner": [burner.pid]}, names={})
    meter.begin()
    give_up = time.monotonic() + 30
    # /proc counts in clock ticks (10 ms), so it may read a little under what the burner burnt.
    while cpu_seconds(burner.pid) < BURN_SECONDS * 0.9:
        assert time.monotonic() < give_up, "the burner did not burn its CPU in 30 s"
        time.sleep(0.05)
    meter.sample()
    burner.stdin.close()
    burner.wait(timeout=30)

    percent = meter.end()["burner"]

    # What it burned after begin(): all but its start-up, which comes before the loop.
    counted = percent * meter.elapsed / 100
    assert BURN_SECONDS * 0.6 <= counted <= BURN_SECONDS * 1.5, counted
