"""PostgreSQL access shared by every service: the connection pool and schema migrations."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy

from acme_orders.core.settings import Settings

# A connection of its own or one borrowed from a pool: handlers take either.
Connection = asyncpg.Connection | PoolConnectionProxy

logger = logging.getLogger(__name__)

BASELINE = "init.sql"
# Any key will do, as long as every migrating process uses the same one.
_MIGRATION_LOCK_KEY = 0x0ACE_0DE5


# SQLSTATEs that say nothing about the work, only that the database cannot do it now: it is
# away, starting, shutting down or failing over (class 08 connection exceptions, 57P01-57P03
# operator intervention, 57P05 an idle session closed by idle_session_timeout, 25006 a read-only
# transaction on a server that just stopped being the primary or a database made read-only),
# overloaded (class 53: too many connections, out of memory or disk), or it chose this
# transaction as a deadlock or serialization victim (40P01, 40001), or cancelled the statement
# (57014: it ran past statement_timeout, waiting for a lock as a rule, or an operator cancelled
# it). Retried, the same work succeeds once the cause has passed. Classes, not lists of
# exceptions: a code asyncpg has no class for (a newer server's) is classified all the same.
TRANSIENT_SQLSTATE_CLASSES = ("08", "53")
TRANSIENT_SQLSTATES = frozenset(
    {"57P01", "57P02", "57P03", "57P05", "57014", "25006", "40001", "40P01"}
)
# Everything the database or the way to it may raise; is_transient tells which of them are an
# outage. asyncpg raises PostgresError subclasses for what the server said (at connect too:
# 53300, too many connections), InterfaceError and InternalClientError for a connection in the
# wrong state, OSError and TimeoutError for a server that cannot be reached.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def is_transient(error: BaseException) -> bool:
    """Whether a database error means "not now" rather than "never": the one answer the API (503
    with Retry-After), the consumers (retry in place, the message's deliveries untouched) and the
    publisher (retry the batch) act on."""
    if isinstance(error, asyncpg.PostgresError):
        sqlstate = getattr(error, "sqlstate", None) or ""
        return sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES or sqlstate in TRANSIENT_SQLSTATES
    # No SQLSTATE: the connection itself broke (refused, reset, timed out, closed under a
    # query), or was used at the moment its server died (asyncpg's InternalClientError, "cannot
    # switch to state 12").
    return isinstance(
        error, (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError)
    )


def server_refuses_writes(error: BaseException) -> bool:
    """Whether the error says that the connection's session cannot write, and will not for as long
    as it lasts (25006): its server is a standby, or was demoted by a failover, or the database
    was made read-only (default_transaction_read_only), which a session takes on only when it
    starts. Unlike the other transient errors, retrying on the same connection never succeeds: the
    connection has to go, and the next one finds the primary, or the database writable again."""
    return isinstance(error, asyncpg.ReadOnlySQLTransactionError)


class _AcquireContext(PoolAcquireContext):
    """asyncpg's `async with pool.acquire()`, which also discards the connection when the block
    raised an error that server_refuses_writes: its holder in the pool connects afresh when it
    is next used."""

    __slots__ = ()

    async def __aexit__(self, *exc: object) -> None:
        # (type, value, traceback), as the with statement passes them.
        error = exc[1] if len(exc) > 1 else None
        if (
            self.connection is not None
            and isinstance(error, BaseException)
            and server_refuses_writes(error)
        ):
            # Only this one: each of the others is discarded at its own first refusal. Retiring
            # them all at once would reconnect the whole pool on every refused write, a storm of
            # connections against a database that is in trouble already.
            logger.info("the database refuses writes (%s); reconnecting", error)
            self.connection.terminate()
        await super().__aexit__(*exc)


class BoundedWaitPool(asyncpg.Pool):
    """asyncpg's pool, but `acquire()` (and with it `fetch`, `execute`...) waits for a free
    connection at most `acquire_timeout` seconds, then raises TimeoutError; asyncpg's own waits
    without limit unless each call says otherwise. None: without limit, as asyncpg does.

    And a connection that refused a write because its session is read-only is not handed out
    again (server_refuses_writes): without that, a pool keeps it, and fails every write on it,
    long after the primary is back or the database writable again."""

    __slots__ = ("_acquire_timeout",)

    def __init__(self, dsn: str, *, acquire_timeout: float | None, **options: Any) -> None:
        self._acquire_timeout = acquire_timeout
        super().__init__(dsn, **options)

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        return _AcquireContext(self, self._acquire_timeout if timeout is None else timeout)


async def create_pool(
    settings: Settings,
    *,
    min_size: int = 1,
    max_size: int | None = None,
    acquire_timeout: float | None = None,
    statement_timeout: float | None = None,
) -> asyncpg.Pool:
    """A pool of connections; with min_size=0 it opens none up front, so it can be created while
    the database is down (the API starts anyway and answers 503 until the database is back).

    `acquire_timeout`: seconds a caller waits for a free connection (None: as long as it takes).
    `statement_timeout`: seconds the server lets each statement run, lock waits included, before
    it cancels it (SQLSTATE 57014); None: the server's own setting."""
    server_settings = (
        {"statement_timeout": f"{max(1, round(statement_timeout * 1000))}ms"}
        if statement_timeout is not None
        else None
    )
    pool = BoundedWaitPool(
        settings.database_url,
        acquire_timeout=acquire_timeout,
        reset=_keep_session,
        min_size=min_size,
        max_size=max_size or settings.db_pool_size,
        # asyncpg.create_pool's defaults, which its Pool class wants spelt out.
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        # A dead server must not hang a request or a handler forever.
        timeout=10,
        command_timeout=30,
        server_settings=server_settings,
    )
    await pool
    return pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Run instead of asyncpg's reset of a connection going back to the pool. Ours never change
    session state (no SET, LISTEN, advisory lock or open cursor: the publisher LISTENs on a
    connection of its own), so the default reset, a round trip to the server on every release,
    buys nothing. asyncpg still rolls back a transaction left open before calling this."""


async def close_pool(pool: asyncpg.Pool, within: float = 5.0) -> None:
    """Close the pool politely, or terminate its connections if that takes longer than `within`
    seconds: a connection to a database that went away must not keep a process from exiting."""
    try:
        await asyncio.wait_for(pool.close(), within)
    except TimeoutError:
        logger.warning("database connections did not close in %.0fs; terminating them", within)
        pool.terminate()


def migrations_dir() -> Path:
    """Where the SQL files are: inside the installed package (a wheel carries a copy of db/), or
    the repository's db/ for an editable install, which does not see that copy."""
    packaged = Path(str(resources.files("acme_orders").joinpath("migrations")))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "db"


def migration_files(directory: Path) -> list[Path]:
    """The baseline first, then the numbered files (``002_add_x.sql``) in numeric order."""
    numbered = sorted(
        (p for p in directory.glob("*.sql") if re.match(r"^\d+_", p.name)),
        key=lambda p: int(p.name.split("_", 1)[0]),
    )
    return [directory / BASELINE, *numbered]


async def migrate(settings: Settings) -> list[str]:
    """Bring the schema up to date and load the catalogue; returns the files applied.

    The baseline (init.sql) is idempotent and re-applied every time; each numbered file is applied
    once and recorded in schema_migrations. An advisory lock lets several processes migrate at once.
    """
    await ensure_database(settings)
    applied: list[str] = []
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                filename    text PRIMARY KEY,
                checksum    text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT clock_timestamp()
            )
            """
        )
        done = {
            r["filename"]: r["checksum"]
            for r in await conn.fetch("SELECT filename, checksum FROM schema_migrations")
        }
        for path in migration_files(migrations_dir()):
            sql = path.read_text(encoding="utf-8")
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            if path.name != BASELINE and path.name in done:
                if done[path.name] != checksum:
                    raise RuntimeError(
                        f"{path.name} changed after it was applied; add a new numbered file instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    """
                    INSERT INTO schema_migrations (filename, checksum) VALUES ($1, $2)
                    ON CONFLICT (filename) DO UPDATE
                        SET checksum = EXCLUDED.checksum, applied_at = clock_timestamp()
                    """,
                    path.name,
                    checksum,
                )
            applied.append(path.name)
            logger.info("applied %s", path.name)
    finally:
        await conn.close()
    return applied


async def unapplied_migrations(conn: Connection) -> list[str]:
    """The migrations this code carries that the database lacks, in the order migrate applies
    them: every numbered file not recorded in schema_migrations with its checksum, and the
    baseline if it was never applied at all. Empty: the schema is what this code needs.

    The baseline is re-applied by every migrate, so any recorded checksum will do: an older
    image still runs against a baseline a newer migrate applied. Schema changes come as numbered
    files, which never change once applied, so their checksums must match."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return [path.name for path in migration_files(migrations_dir())]
    recorded = {
        r["filename"]: r["checksum"]
        for r in await conn.fetch("SELECT filename, checksum FROM schema_migrations")
    }
    missing: list[str] = []
    for path in migration_files(migrations_dir()):
        if path.name == BASELINE:
            if path.name not in recorded:
                missing.append(path.name)
            continue
        checksum = hashlib.sha256(path.read_text(encoding="utf-8").encode()).hexdigest()
        if recorded.get(path.name) != checksum:
            missing.append(path.name)
    return missing


async def wait_for_schema(settings: Settings, poll_interval: float = 2.0) -> None:
    """Return once the database of DATABASE_URL has every migration this code carries: a
    service's start waits on it, so that it never runs against a schema migrate has not brought
    up to date yet (Kubernetes starts the migrate Job and the services together). A database that
    does not answer yet is waited for too; what is missing is logged whenever it changes."""
    said = ""
    while True:
        try:
            conn = await asyncpg.connect(settings.database_url, timeout=10)
            try:
                missing = await unapplied_migrations(conn)
            finally:
                await conn.close()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            news = f"database not reachable ({' '.join(str(exc).split()) or type(exc).__name__})"
        else:
            if not missing:
                logger.info("schema up to date")
                return
            news = "waiting for migrate to apply " + ", ".join(missing)
        if news != said:
            logger.info("%s; checking again every %.0fs", news, poll_interval)
            said = news
        await asyncio.sleep(poll_interval)


def admin_url(settings: Settings) -> str:
    """The DSN used to create a missing database: DATABASE_ADMIN_URL, or the superuser postgres on
    the server of DATABASE_URL."""
    if settings.database_admin_url:
        return settings.database_admin_url
    parts = urlsplit(settings.database_url)
    # The host part as it is: one host[:port], or libpq's list of them (h1:5432,h2:5432).
    hosts = parts.netloc.rsplit("@", 1)[-1] or "127.0.0.1"
    return urlunsplit((parts.scheme, f"postgres@{hosts}", "/postgres", parts.query, ""))


async def ensure_database(settings: Settings) -> None:
    """Create the role and database of DATABASE_URL when they are missing and the server lets us."""
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=10)
    except (
        asyncpg.InvalidCatalogNameError,
        asyncpg.InvalidAuthorizationSpecificationError,
        asyncpg.InvalidPasswordError,
    ) as missing:
        logger.info("database not reachable as configured (%s); trying to create it", missing)
    else:
        await conn.close()
        return

    parts = urlsplit(settings.database_url)
    role = unquote(parts.username or "postgres")
    password = unquote(parts.password) if parts.password else None
    database = unquote(parts.path.lstrip("/")) or role
    try:
        admin = await asyncpg.connect(admin_url(settings), timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(
            f"database {database!r} or role {role!r} is missing and cannot be created "
            f"({exc}); create them, or set DATABASE_ADMIN_URL to a role that can"
        ) from exc
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            # format() quotes on the server side: %I for identifiers, %L for literals.
            statement = await admin.fetchval(
                "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)",
                role,
                password,
            )
            await admin.execute(statement)
            logger.info("created role %s", role)
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            statement = await admin.fetchval(
                "SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $2::text)", database, role
            )
            await admin.execute(statement)
            logger.info("created database %s", database)
    finally:
        await admin.close()
