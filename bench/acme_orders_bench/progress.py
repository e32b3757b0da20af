"""Progress on the terminal while a run goes: a line every few seconds on stderr, so that stdout
keeps only the steps and the summary. Quiet when stderr is not a terminal (CI, a pipe, a file) or
with --quiet: the figures are in the summary and the JSON either way."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

# Seconds between two progress lines.
PROGRESS_EVERY = 5


def load_line(
    label: str,
    elapsed: float,
    total: float,
    accepted: int,
    rate: float | None,
    final: int,
    backlog: int,
) -> str:
    """A load run's line: where it is in its seconds, the orders the API accepted so far and at
    what rate over the last interval, how many are final, and the outbox's NEW rows. HTTP errors
    are wrk's to count: they come in the summary, when wrk ends."""
    shown_rate = "n/a" if rate is None else f"{rate:,.0f}/s"
    return (
        f"{label}{elapsed:5.0f}/{total:.0f} s  accepted {accepted:,} ({shown_rate})  "
        f"final {final:,}  outbox backlog {backlog:,}"
    )


def drain_line(elapsed: float, published: int, total: int, rate: float | None) -> str:
    """A drain's line: the events published so far of the backlog, and at what rate."""
    shown_rate = "n/a" if rate is None else f"{rate:,.0f}/s"
    return f"drain {elapsed:5.0f} s  published {published:,} of {total:,} ({shown_rate})"


def rate_between(count_before: int, count_now: int, seconds: float) -> float | None:
    """Per second between two readings; None before there are two."""
    if seconds <= 0:
        return None
    return (count_now - count_before) / seconds


@dataclass
class Reporter:
    """Prints a progress line at most every PROGRESS_EVERY seconds, when it should print at all."""

    enabled: bool
    stream: TextIO
    every: float = PROGRESS_EVERY
    _last_at: float | None = None
    _last_count: int = 0

    @classmethod
    def for_terminal(cls, quiet: bool) -> Reporter:
        return cls(enabled=not quiet and sys.stderr.isatty(), stream=sys.stderr)

    def due(self, at: float) -> bool:
        """Whether a line is due `at` seconds into the run (the first one after `every`)."""
        return self.enabled and at >= (self._last_at or 0.0) + self.every

    def rate(self, at: float, count: int) -> float | None:
        """The rate of `count` since the last line, and remember this reading."""
        rate = rate_between(self._last_count, count, at - (self._last_at or 0.0))
        self._last_at, self._last_count = at, count
        return rate

    def restart(self) -> None:
        """A new run (a sweep's next step): its seconds count from zero again."""
        self._last_at, self._last_count = None, 0

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)
