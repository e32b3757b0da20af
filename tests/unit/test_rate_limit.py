"""The token bucket behind the rate limit on POST /orders, on a clock the test moves."""

from __future__ import annotations

import pytest

from acme_orders.order_api.rate_limit import MAX_TRACKED_CLIENTS, TokenBucketLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_gets_its_burst_at_once_then_is_told_when_to_come_back() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate=2.0, burst=3, clock=clock)

    granted = [limiter.take("key 1") for _ in range(3)]
    refused = limiter.take("key 1")

    assert granted == [0.0, 0.0, 0.0]
    assert refused == pytest.approx(0.5)  # one token every half second


def test_tokens_come_back_at_the_rate_and_never_beyond_the_burst() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.take("key 1")

    clock.now += 0.5
    assert limiter.take("key 1") == 0.0
    assert limiter.take("key 1") > 0

    clock.now += 3600  # an hour idle refills the bucket, to the burst and no more
    assert [limiter.take("key 1") for _ in range(4)][:3] == [0.0, 0.0, 0.0]
    assert limiter.take("key 1") > 0


def test_a_refused_request_takes_no_token() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate=1.0, burst=1, clock=clock)
    limiter.take("key 1")
    for _ in range(100):  # hammering while refused does not push the next token further away
        limiter.take("key 1")

    clock.now += 1.0

    assert limiter.take("key 1") == 0.0


def test_each_client_has_a_bucket_of_its_own() -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=1, clock=Clock())

    assert limiter.take("key 1") == 0.0
    assert limiter.take("key 1") > 0
    assert limiter.take("key 2") == 0.0


def test_memory_stays_bounded_with_many_clients_that_come_once() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate=10.0, burst=5, clock=clock)

    for n in range(3 * MAX_TRACKED_CLIENTS):
        limiter.take(f"address {n}")
        clock.now += 0.01  # each bucket is full again 0.1 s after its one request

    assert len(limiter._buckets) <= MAX_TRACKED_CLIENTS + 1


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_a_bucket_that_could_never_grant_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="positive rate"):
        TokenBucketLimiter(rate=rate, burst=burst)
