"""One answer to "is this database error an outage or a fault?", which the API (503 or 500), the
consumers (retry in place, or let the message meet its fate) and the publisher act on."""

from __future__ import annotations

import asyncpg
import pytest
from asyncpg import exceptions

from acme_orders.core.database import is_transient

OUTAGES = [
    exceptions.TooManyConnectionsError,  # 53300: a role's or the server's connection limit
    exceptions.OutOfMemoryError,  # 53200
    exceptions.DiskFullError,  # 53100
    exceptions.ConnectionFailureError,  # 08006
    exceptions.ConnectionDoesNotExistError,  # 08003
    exceptions.ClientCannotConnectError,  # 08001
    exceptions.AdminShutdownError,  # 57P01: pg_terminate_backend, a fast shutdown
    exceptions.CrashShutdownError,  # 57P02
    exceptions.CannotConnectNowError,  # 57P03: starting up, or recovering
    exceptions.ReadOnlySQLTransactionError,  # 25006: a standby, or read-only after a failover
    exceptions.SerializationError,  # 40001
    exceptions.DeadlockDetectedError,  # 40P01
]
FAULTS = [
    exceptions.UniqueViolationError,  # 23505
    exceptions.CheckViolationError,  # 23514: stock below zero
    exceptions.UndefinedTableError,  # 42P01: a schema that was not migrated
    exceptions.InsufficientPrivilegeError,  # 42501
    exceptions.RaiseError,  # P0001: a trigger refusing a status that moves backwards
    exceptions.InvalidTextRepresentationError,  # 22P02
]


@pytest.mark.parametrize("error", OUTAGES, ids=lambda e: f"{e.sqlstate} {e.__name__}")
def test_an_outage_is_transient(error: type[asyncpg.PostgresError]) -> None:
    assert is_transient(error("the server says so"))


@pytest.mark.parametrize("error", FAULTS, ids=lambda e: f"{e.sqlstate} {e.__name__}")
def test_a_fault_is_not(error: type[asyncpg.PostgresError]) -> None:
    assert not is_transient(error("the server says so"))


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "refused"),
        ConnectionResetError(104, "reset"),
        TimeoutError(),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.InternalClientError("cannot switch to state 12; another operation is in progress"),
    ],
    ids=type,
)
def test_a_connection_that_broke_is_transient(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize("error", [ValueError("bad"), KeyError("sku"), RuntimeError()], ids=type)
def test_anything_else_is_not(error: BaseException) -> None:
    assert not is_transient(error)
