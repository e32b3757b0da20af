"""What the relay does after a failed batch, by what failed it: the database with an outage
(retry quickly, same channel, one warning), the database for a reason of its own (retry slowly,
an error each time), or the broker (retry on a fresh channel)."""

from __future__ import annotations

import aio_pika
import aiormq
import pytest
from asyncpg import exceptions
from pamqp import commands

from acme_orders.publisher.relay import OutboxUnavailableError
from acme_orders.publisher.service import (
    FAULT_PAUSE,
    FIRST_PAUSE,
    MAX_PAUSE,
    Failure,
    retry_after,
)


def database_failed(cause: BaseException) -> OutboxUnavailableError:
    try:
        raise OutboxUnavailableError("the outbox is out of reach") from cause
    except OutboxUnavailableError as error:
        return error


CASES = [
    (database_failed(exceptions.TooManyConnectionsError()), Failure.DATABASE_UNAVAILABLE),
    (database_failed(exceptions.AdminShutdownError()), Failure.DATABASE_UNAVAILABLE),
    (database_failed(exceptions.ReadOnlySQLTransactionError()), Failure.DATABASE_UNAVAILABLE),
    (database_failed(exceptions.ConnectionDoesNotExistError()), Failure.DATABASE_UNAVAILABLE),
    (database_failed(ConnectionRefusedError(111, "refused")), Failure.DATABASE_UNAVAILABLE),
    (database_failed(TimeoutError()), Failure.DATABASE_UNAVAILABLE),
    (database_failed(exceptions.UndefinedTableError()), Failure.DATABASE_FAULT),
    (database_failed(exceptions.InsufficientPrivilegeError()), Failure.DATABASE_FAULT),
    (aio_pika.exceptions.DeliveryError(None, commands.Basic.Nack()), Failure.BROKER),
    (aiormq.exceptions.ChannelInvalidStateError("closed"), Failure.BROKER),
    # A confirm that did not come in time: publish_all's, not the database's.
    (TimeoutError(), Failure.BROKER),
]


@pytest.mark.parametrize(
    ("error", "failure"),
    CASES,
    ids=[f"{type(e.__cause__ or e).__name__}->{f.name}" for e, f in CASES],
)
def test_a_failed_batch_is_retried_as_what_failed_it_calls_for(
    error: Exception, failure: Failure
) -> None:
    retry = retry_after(error, FIRST_PAUSE)

    assert retry.failure is failure
    # Only the broker's failures give the channel up: the database's say nothing about it.
    assert retry.reopen_channel is (failure is Failure.BROKER)
    if failure is Failure.DATABASE_FAULT:
        # Waits for an operator: retried, but not every second.
        assert retry.pause == FAULT_PAUSE > MAX_PAUSE
    else:
        # An outage: back within a second of its end.
        assert retry.pause == FIRST_PAUSE <= MAX_PAUSE
