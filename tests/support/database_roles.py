"""A database role of a test's own, with what the services need and no more, as production's
`acme_app` has (deploy/postgres/app-role.sh): a superuser ignores a role's CONNECTION LIMIT and
can turn a read-only default off, so faults on the database must be tried on a role like that.

Named `acme_dbf_<pid>_<hex>`: a run drops the roles of runs whose process is gone, after their
databases (sweep_abandoned_roles), and touches no other."""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from acme_orders.core.runtime import pid_alive
from tests.support.environment import ADMIN_DATABASE_URL, TestEnvironment

PREFIX = "acme_dbf_"
_NAME = re.compile(rf"^{PREFIX}(\d+)_[0-9a-f]+$")

# format() quotes on the server side: %I an identifier. One statement each, run in the test's
# database (the grants on its schema and tables live there).
GRANTS = (
    "GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I",
    "GRANT USAGE ON SCHEMA public TO %I",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %I",
    "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %I",
)


async def _statement(conn: asyncpg.Connection, template: str, *names: str) -> str:
    placeholders = ", ".join(f"${n}::text" for n in range(1, len(names) + 1))
    statement: str = await conn.fetchval(f"SELECT format('{template}', {placeholders})", *names)
    return statement


@dataclass(frozen=True)
class AppRole:
    name: str
    # Where PostgreSQL asks for a password over TCP (Debian's pg_hba.conf, as on a bare machine
    # set up by scripts/servers.sh), trust alone would not let the role in.
    password: str


async def create_app_role(env: TestEnvironment) -> AppRole:
    """A LOGIN role, with a password of its own, that reads and writes every table of the
    environment's database and owns nothing."""
    role = f"{PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    password = secrets.token_hex(16)
    admin = await asyncpg.connect(env.database_url, timeout=10)
    try:
        await admin.execute(
            await _statement(
                admin,
                "CREATE ROLE %I LOGIN PASSWORD %L NOSUPERUSER NOCREATEDB NOCREATEROLE "
                "NOREPLICATION NOBYPASSRLS",
                role,
                password,
            )
        )
        try:
            await admin.execute(await _statement(admin, GRANTS[0], env.name, role))
            for grant in GRANTS[1:]:
                await admin.execute(await _statement(admin, grant, role))
        except BaseException:
            await admin.execute(await _statement(admin, "DROP OWNED BY %I", role))
            await admin.execute(await _statement(admin, "DROP ROLE %I", role))
            raise
    finally:
        await admin.close()
    return AppRole(role, password)


def database_url_as(env: TestEnvironment, role: AppRole) -> str:
    """The environment's DATABASE_URL, connecting as `role` with its password."""
    parts = urlsplit(env.database_url)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    login = f"{role.name}:{role.password}@{hosts}"
    return urlunsplit((parts.scheme, login, parts.path, parts.query, ""))


async def drop_app_role(role: str) -> None:
    """Drop the role; its database must be gone (drop_environment), which takes its grants."""
    admin = await asyncpg.connect(ADMIN_DATABASE_URL, timeout=10)
    try:
        await admin.execute(await _statement(admin, "DROP ROLE IF EXISTS %I", role))
    finally:
        await admin.close()


async def sweep_abandoned_roles() -> list[str]:
    """Drop the roles of runs whose process is gone (run sweep_abandoned_environments first)."""
    admin = await asyncpg.connect(ADMIN_DATABASE_URL, timeout=10)
    try:
        names = [
            r["rolname"]
            for r in await admin.fetch(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", PREFIX
            )
        ]
    finally:
        await admin.close()
    swept = []
    for name in names:
        match = _NAME.match(name)
        if match and not pid_alive(int(match.group(1))):
            await drop_app_role(name)
            swept.append(name)
    return swept
