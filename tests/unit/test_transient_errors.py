"""One answer to "is this database error an outage or a fault?", which the API (503 or 500), the
consumers (retry in place, or let the message meet its fate) and the publisher act on."""

from __future__ import annotations

import asyncpg
import pytest
from asyncpg import exceptions

from acme_orders.core.database import is_transient, server_refuses_writes

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


# Each SQLSTATE as the server sends it, built the way asyncpg builds the error it raises (its
# class for the code if it has one, UnknownPostgresError otherwise), and its classification.
SQLSTATES = [
    # class 08, connection exceptions: every code, known to asyncpg or not
    ("08000", True, "connection exception"),
    ("08001", True, "the client could not connect"),
    ("08003", True, "the connection does not exist"),
    ("08004", True, "the server rejected the connection"),
    ("08006", True, "connection failure"),
    ("08P01", True, "protocol violation: a connection cut mid-message"),
    ("08999", True, "a code of the class asyncpg does not know"),
    # class 53, insufficient resources
    ("53000", True, "insufficient resources"),
    ("53100", True, "disk full"),
    ("53200", True, "out of memory"),
    ("53300", True, "too many connections: a role's CONNECTION LIMIT, max_connections"),
    ("53400", True, "configuration limit exceeded"),
    # class 57, operator intervention: only the codes of a server going away or coming back
    ("57P01", True, "admin shutdown: pg_terminate_backend, a fast shutdown"),
    ("57P02", True, "crash shutdown"),
    ("57P03", True, "cannot connect now: starting up, in recovery"),
    ("57P05", True, "idle session timeout"),
    ("57014", True, "query cancelled: statement_timeout, pg_cancel_backend"),
    ("57000", False, "operator intervention, unspecified"),
    ("57P04", False, "database dropped: it will not come back"),
    # the others that retrying fixes
    ("25006", True, "read-only transaction: a standby, a demoted primary, a read-only database"),
    ("40001", True, "serialization failure"),
    ("40P01", True, "deadlock victim"),
    # faults: the work, the schema or the configuration is wrong, and stays wrong
    ("25001", False, "active SQL transaction"),
    ("40002", False, "integrity constraint violation at commit"),
    ("23505", False, "unique violation"),
    ("23514", False, "check violation: stock below zero"),
    ("22P02", False, "invalid text representation"),
    ("42P01", False, "undefined table: a schema not migrated"),
    ("42501", False, "insufficient privilege: a grant missing"),
    ("28000", False, "invalid authorization: a role that may not log in"),
    ("28P01", False, "invalid password"),
    ("3D000", False, "invalid catalog name: no such database"),
    ("P0001", False, "raise exception: a trigger refusing a status that moves backwards"),
    ("XX000", False, "internal error"),
]


@pytest.mark.parametrize(
    ("sqlstate", "transient", "what"), SQLSTATES, ids=[row[0] for row in SQLSTATES]
)
def test_each_sqlstate_is_classified_by_its_class(
    sqlstate: str, transient: bool, what: str
) -> None:
    error = asyncpg.PostgresError.new({"C": sqlstate, "M": what, "S": "ERROR"})

    assert is_transient(error) is transient, f"{sqlstate} ({what}, {type(error).__name__})"


@pytest.mark.parametrize("sqlstate", [row[0] for row in SQLSTATES])
def test_only_a_read_only_session_has_to_reconnect(sqlstate: str) -> None:
    error = asyncpg.PostgresError.new({"C": sqlstate, "M": "the server says so", "S": "ERROR"})

    assert server_refuses_writes(error) is (sqlstate == "25006")
