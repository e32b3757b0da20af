"""A database and a vhost of a run's own, made, migrated and removed: what every test run and
every benchmark run works in, so that runs never see each other's data.

Names carry the pid of the run that made them (`acme_test_<pid>_<hex>`, `acme_bench_<pid>_<hex>`),
so a run sweeps away what crashed runs of its kind left behind without touching one still going.
The tests (tests/environment.py) and the benchmark (system.py) both make theirs here.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg

from acme_orders.core import database, messaging
from acme_orders.core.runtime import pid_alive
from acme_orders.core.settings import Settings
from acme_orders.core.topology import QueueSpec

RABBITMQCTL_TIMEOUT = 60


class ScratchError(RuntimeError):
    """A scratch database or vhost could not be made or removed; the message says why."""


@dataclass(frozen=True, slots=True)
class Rabbitmqctl:
    """rabbitmqctl, run as `command`: ("rabbitmqctl",) where the broker runs on this machine, or
    a prefix that reaches it, such as ("docker", "exec", "-i", "CONTAINER", "rabbitmqctl")."""

    command: tuple[str, ...] = ("rabbitmqctl",)

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        executable = shutil.which(self.command[0])
        if executable is None:
            raise ScratchError(
                f"{self.command[0]} is not on PATH: vhosts are made with {shlex.join(self.command)}"
                " (run where RabbitMQ runs, as root or the rabbitmq user, or name another command)"
            )
        # A session of its own, so that a timeout kills the whole of it: rabbitmqctl run as root
        # is `su rabbitmq -c ...` around an Erlang VM, and killing only `su` leaves the VM holding
        # one of the few distribution ports every later rabbitmqctl needs.
        with subprocess.Popen(
            [executable, *self.command[1:], "-q", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as process:
            try:
                stdout, stderr = process.communicate(stdin or "", timeout=RABBITMQCTL_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                raise ScratchError(
                    f"rabbitmqctl {' '.join(args)} did not finish within {RABBITMQCTL_TIMEOUT} s"
                ) from None
        if process.returncode != 0:
            raise ScratchError(f"rabbitmqctl {' '.join(args)} failed: {stderr.strip()}")
        return stdout


@dataclass(frozen=True, slots=True)
class Servers:
    """Where scratch databases and vhosts are made: `base` has the DSN and the AMQP URL whose
    database and vhost each scratch replaces with its own name (and every other setting a run's
    services get), `admin_url` a role that may create and drop databases, `rabbitmq_user` the
    user given every permission on a new vhost."""

    base: Settings
    admin_url: str
    rabbitmqctl: Rabbitmqctl

    @property
    def rabbitmq_user(self) -> str:
        return unquote(urlsplit(self.base.rabbitmq_nodes[0]).username or "guest")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), parts.query, ""))


def new_name(prefix: str) -> str:
    return f"{prefix}{os.getpid()}_{secrets.token_hex(4)}"


def settings_of(servers: Servers, name: str) -> Settings:
    """The settings of the scratch `name`: the base's, pointed at its database and vhost."""
    return servers.base.model_copy(
        update={
            "database_url": with_database(servers.base.database_url, name),
            "rabbitmq_url": with_vhost(servers.base.rabbitmq_nodes[0], name),
            "database_admin_url": servers.admin_url,
        }
    )


async def create_scratch(servers: Servers, name: str, queues: Sequence[QueueSpec]) -> Settings:
    """Make, migrate and declare the database and vhost `name`; its settings. What was made is
    removed again if a step fails."""
    settings = settings_of(servers, name)
    try:
        # Creates the database with the admin DSN (and the role of DATABASE_URL if missing).
        await database.migrate(settings)
        await asyncio.to_thread(servers.rabbitmqctl, "add_vhost", name)
        await asyncio.to_thread(
            servers.rabbitmqctl,
            "set_permissions",
            "-p",
            name,
            servers.rabbitmq_user,
            ".*",
            ".*",
            ".*",
        )
        await messaging.declare_topology(settings, queues)
    except BaseException:
        await drop_scratch(servers, name)
        raise
    return settings


async def drop_scratch(servers: Servers, name: str) -> None:
    """Drop the database and the vhost; each is attempted even if the other fails."""
    try:
        admin = await asyncpg.connect(servers.admin_url, timeout=10)
        try:
            statement = await admin.fetchval(
                "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', $1::text)", name
            )
            await admin.execute(statement)
        finally:
            await admin.close()
    finally:
        listed = await asyncio.to_thread(servers.rabbitmqctl, "list_vhosts", "name")
        if name in listed.split():
            await asyncio.to_thread(servers.rabbitmqctl, "delete_vhost", name)


async def sweep_abandoned(servers: Servers, prefix: str) -> list[str]:
    """Drop the databases and vhosts named `<prefix><pid>_<hex>` whose run's process is gone
    (killed with -9, the machine restarted): they would otherwise stay forever."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)_[0-9a-f]+$")
    admin = await asyncpg.connect(servers.admin_url, timeout=10)
    try:
        databases = [
            r["datname"]
            for r in await admin.fetch(
                "SELECT datname FROM pg_database WHERE starts_with(datname, $1)", prefix
            )
        ]
    finally:
        await admin.close()
    vhosts = (await asyncio.to_thread(servers.rabbitmqctl, "list_vhosts", "name")).split()
    swept = []
    for name in sorted(set(databases) | {v for v in vhosts if v.startswith(prefix)}):
        match = pattern.match(name)
        if match and not pid_alive(int(match.group(1))):
            await drop_scratch(servers, name)
            swept.append(name)
    return swept
