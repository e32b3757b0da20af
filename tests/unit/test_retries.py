"""The pure decisions of retries that wait: how long after which attempt, the jitter, the attempt a
delivery is, and the settings they come from."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from acme_orders.core.retries import (
    ATTEMPT_HEADER,
    ERROR_CHARS,
    RetryPolicy,
    attempt_of,
    error_text,
    expiration_ms,
    retry_delay,
    retry_queue_name,
)
from acme_orders.core.settings import MAX_ATTEMPTS_LIMIT, Settings

delays = st.floats(min_value=0.01, max_value=86400, allow_nan=False, allow_infinity=False)
attempts = st.integers(min_value=1, max_value=1000)
draws = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


def test_the_waits_double_from_the_initial_delay_up_to_the_cap() -> None:
    assert [retry_delay(n, 1.0, 60.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


@given(attempts, delays, delays)
def test_a_wait_never_shrinks_from_one_attempt_to_the_next_and_stays_within_its_bounds(
    attempt: int, a: float, b: float
) -> None:
    initial, maximum = min(a, b), max(a, b)

    wait = retry_delay(attempt, initial, maximum)

    assert initial <= wait <= maximum
    assert retry_delay(attempt + 1, initial, maximum) >= wait
    if wait < maximum:
        assert retry_delay(attempt + 1, initial, maximum) == min(2 * wait, maximum)


@given(delays, draws)
def test_the_jitter_waits_between_half_the_delay_and_all_of_it_never_longer(
    delay: float, draw: float
) -> None:
    ms = expiration_ms(delay, draw)

    assert ms >= 1
    # Never past the delay: a copy queued behind another one waits at most that long.
    assert ms <= max(1, round(delay * 1000))
    assert ms >= round(delay * 500) - 1


def test_no_jitter_at_a_draw_of_zero_and_half_the_delay_near_one() -> None:
    assert expiration_ms(2.0, 0.0) == 2000
    assert expiration_ms(2.0, 0.999999) == 1000


@given(st.integers(min_value=1, max_value=MAX_ATTEMPTS_LIMIT), attempts, delays, delays)
def test_every_attempt_but_the_last_is_followed_by_a_wait_in_a_queue_of_its_own(
    max_attempts: int, attempt: int, a: float, b: float
) -> None:
    policy = RetryPolicy(min(a, b), max(a, b), max_attempts)

    delay = policy.delay_after(attempt)

    if attempt < max_attempts:
        assert attempt in policy.waits
        assert delay == retry_delay(attempt, policy.initial_delay, policy.max_delay)
    else:
        # The last attempt (or one past it, from a queue of older settings) parks the message.
        assert attempt not in policy.waits
        assert delay is None
    assert len(policy.waits) == max_attempts - 1


@pytest.mark.parametrize(
    ("headers", "attempt"),
    [
        (None, 1),
        ({}, 1),
        ({ATTEMPT_HEADER: 3}, 3),
        ({ATTEMPT_HEADER: 0}, 1),
        ({ATTEMPT_HEADER: -2}, 1),
        ({ATTEMPT_HEADER: "3"}, 1),
        ({ATTEMPT_HEADER: True}, 1),
    ],
)
def test_the_attempt_a_delivery_is_comes_from_its_header_and_is_one_without(
    headers: dict[str, object] | None, attempt: int
) -> None:
    assert attempt_of(headers) == attempt


def test_retry_queues_are_named_after_their_work_queue_and_attempt() -> None:
    assert retry_queue_name("inventory.order.placed", 2) == "inventory.order.placed.retry.2"


def test_the_error_in_a_header_is_its_type_and_message_cut_short() -> None:
    assert error_text(RuntimeError("boom")) == "RuntimeError: boom"
    assert len(error_text(ValueError("x" * 5000))) == ERROR_CHARS


def test_retry_settings_have_defaults_that_wait_about_two_minutes_over_eight_attempts() -> None:
    policy = RetryPolicy.from_settings(Settings())

    assert policy == RetryPolicy(initial_delay=1.0, max_delay=60.0, max_attempts=8)
    assert sum(retry_delay(n, 1.0, 60.0) for n in policy.waits) == 123


def test_retry_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_INITIAL_DELAY", "0.5")
    monkeypatch.setenv("RETRY_MAX_DELAY", "30")
    monkeypatch.setenv("MAX_ATTEMPTS", "4")

    assert RetryPolicy.from_settings(Settings()) == RetryPolicy(0.5, 30.0, 4)


@pytest.mark.parametrize(
    "wrong",
    [
        {"retry_initial_delay": 10.0, "retry_max_delay": 5.0},
        {"retry_initial_delay": 0.0},
        {"max_attempts": 0},
        {"max_attempts": MAX_ATTEMPTS_LIMIT + 1},
    ],
)
def test_retry_settings_that_make_no_sense_are_refused_at_start(wrong: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**wrong)  # type: ignore[arg-type]
