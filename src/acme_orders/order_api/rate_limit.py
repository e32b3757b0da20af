"""A token bucket per client, in this process: how often one client may place an order.

Written here rather than taken from a library: the ones at hand either make the caller wait
(aiolimiter) or count in windows with a store and locks around them (limits), and what the API
needs is twenty lines: O(1) per request, no I/O, and the seconds to put in Retry-After. One event
loop runs the API, so no lock is needed either.

The limit is per API process: with several replicas behind a load balancer a client gets up to
the limit from each.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Beyond this many clients, buckets that have filled up again are dropped (a client that comes
# back gets a full bucket, which is what it would have anyway): memory stays bounded when the
# clients are addresses rather than keys.
MAX_TRACKED_CLIENTS = 10_000


class TokenBucketLimiter:
    """Each client may send `burst` requests at once, then `rate` per second."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        # client -> (tokens left, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._prune_above = MAX_TRACKED_CLIENTS

    def take(self, client: str) -> float:
        """Take a token for one request: 0.0 if there was one (go ahead), otherwise the seconds
        until there will be one (refuse, and say when to come back)."""
        now = self.clock()
        tokens, counted_at = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - counted_at) * self.rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            if len(self._buckets) > self._prune_above:
                self._prune(now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        full = [
            client
            for client, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self.rate >= self.burst
        ]
        for client in full:
            del self._buckets[client]
        # If most clients are busy, prune again only once their number has doubled: the cost of
        # pruning stays O(1) per request on average.
        self._prune_above = max(MAX_TRACKED_CLIENTS, 2 * len(self._buckets))
