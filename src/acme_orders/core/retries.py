"""Retries that wait: the pure decisions behind them.

A handler that fails (for a reason of its own, not an outage: see consumer.py) is tried again
after a wait that doubles with each attempt, from RETRY_INITIAL_DELAY up to RETRY_MAX_DELAY, and
after MAX_ATTEMPTS attempts the message is parked in its dead-letter queue with the last error.

The wait happens in RabbitMQ, not in the consumer: the failed message is copied into a retry
queue of its work queue, one per attempt (`<queue>.retry.<attempt>`), with a per-message
expiration; when that expires the retry queue dead-letters the copy back to the work queue
through the topic exchange `acme.events.retry`. So a waiting message holds no prefetch slot, no
consumer and no other message of its queue, and survives a consumer's crash.

The queues' names do not depend on the delays, and their arguments name no delay: the delays
travel as each message's expiration. Changing RETRY_INITIAL_DELAY or RETRY_MAX_DELAY therefore
changes no queue; changing MAX_ATTEMPTS adds queues (declared by migrate and by the consumers) or
leaves some unused (deleted by migrate once empty).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from acme_orders.core.settings import Settings

# A topic exchange, so that each service's user may publish to, and bind, its own retry queues
# only (a topic permission on the routing key), where the default exchange would let it publish
# into any queue of the vhost.
RETRY_EXCHANGE = "acme.events.retry"
# The attempt a delivery is: absent on the first one, n on the copy that comes back for attempt n.
ATTEMPT_HEADER = "x-acme-attempt"
# The error that sent a copy to wait: that of the attempt before it. A parked message carries it
# too, from its last wait; the error of its last attempt is in its dead-letter reason.
LAST_ERROR_HEADER = "x-acme-last-error"
# Header values are kept short: a traceback does not belong in a message.
ERROR_CHARS = 1000


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed message is tried again, and when it is given up (see the module's doc)."""

    initial_delay: float
    max_delay: float
    max_attempts: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.retry_initial_delay, settings.retry_max_delay, settings.max_attempts)

    @property
    def waits(self) -> range:
        """The attempts that are followed by a wait (all but the last): one retry queue each."""
        return range(1, self.max_attempts)

    def delay_after(self, attempt: int) -> float | None:
        """Seconds to wait after the failed `attempt` (1: the first delivery) before the next,
        or None when it was the last and the message is to be parked."""
        if attempt >= self.max_attempts:
            return None
        return retry_delay(attempt, self.initial_delay, self.max_delay)


def retry_delay(attempt: int, initial: float, maximum: float) -> float:
    """The longest wait after the failed `attempt`: initial, twice that, four times... capped."""
    # Capped before it is computed, so that a large attempt cannot overflow a float.
    doublings = min(attempt - 1, 64)
    return min(initial * 2.0**doublings, maximum)


def expiration_ms(delay: float, draw: float) -> int:
    """The per-message expiration, in milliseconds, of a copy that is to wait up to `delay`
    seconds, jittered by `draw` (uniform in [0, 1)): between half the delay and all of it, so that
    messages that failed together do not all come back together, and the waits still grow.

    Never more than the delay itself: a retry queue expires only the message at its head, so a
    copy waits behind an earlier one at most until that one's expiration, which is at most the
    same delay from an earlier time."""
    full = max(1, round(delay * 1000))
    return max(1, min(full, round(delay * 1000 * (1 - draw / 2))))


def attempt_of(headers: Mapping[str, object] | None) -> int:
    """Which attempt a delivery is, from its header; 1 when it has none (or one that is not a
    positive whole number, which nothing of ours writes)."""
    value = (headers or {}).get(ATTEMPT_HEADER)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return 1
    return value


def retry_queue_name(queue: str, attempt: int) -> str:
    """The queue a message of `queue` waits in after its failed `attempt`."""
    return f"{queue}.retry.{attempt}"


def error_text(error: BaseException) -> str:
    """The error as a header holds it: its type and message, cut short."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"
