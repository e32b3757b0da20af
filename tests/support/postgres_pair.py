"""A PostgreSQL primary and its synchronous hot standby, of the test run's own, on loopback, with
controls to kill the primary, promote the standby and rejoin the old primary as a standby.

Nothing here touches the machine's own cluster (15/main on 5432, other developers' test runs use
it): the servers are `initdb`'s and `pg_basebackup`'s in the run folder, run as the `postgres`
OS user straight from /usr/lib/postgresql/15/bin (not through pg_ctlcluster, which would register
them in /etc/postgresql), on free ports of 127.0.0.1, with their sockets in the run folder.

Authentication is `trust`, for 127.0.0.1 and the run folder's socket only (replication
included): the servers listen on nothing else, hold only test data and live for one run, and the
tests connect as `postgres` without a password, as they do to the machine's server.

The two servers are `pg0` and `pg1` (their `cluster_name` and the `application_name` of their
replication connection); pg0 starts as the primary. The primary names its standby in
`synchronous_standby_names` only once that standby streams, and a server made a standby has the
setting emptied, so a promoted standby never waits for a standby it does not have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from tests.support.processes import free_port, run_checked
from tests.support.run_folder import RunFolder, any_alive, children_of, kill_processes_of
from tests.support.waiting import wait_until

logger = logging.getLogger(__name__)

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"
SUPERUSER = "postgres"
START_DEADLINE = 60.0

SETTINGS = """
# acme-orders cluster fixtures (tests/support/postgres_pair.py)
listen_addresses = '127.0.0.1'
unix_socket_directories = '{sockets}'
wal_level = replica
max_wal_senders = 10
wal_keep_size = '256MB'
hot_standby = on
# pg_rewind can then bring a primary that was killed back as a standby of the promoted one.
wal_log_hints = on
synchronous_commit = on
max_connections = 200
shared_buffers = '128MB'
logging_collector = off
log_line_prefix = '%m [%p] %q%a '
"""

HBA = """
local all all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
"""


@dataclass(frozen=True)
class PostgresServer:
    """One server: its name (cluster_name and application_name), port and data directory."""

    name: str
    port: int
    data_dir: Path

    def dsn(self, database: str = "postgres") -> str:
        """The DSN of this server alone."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def postmaster_pid(self) -> int | None:
        """The pid in postmaster.pid (first line), if the file is there."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None


@dataclass
class PostgresPair:
    """A primary and a synchronous hot standby. Start one with `PostgresPair.launch`; `destroy()`
    kills both and removes their folder.

    `primary` and `standby` follow the roles: after `promote_standby()` the old standby is the
    primary and `standby` is None until `rejoin_as_standby()`. The controls are coroutines, safe
    to call while a load runs in the same event loop; each records how long it took in
    `timings`."""

    folder: Path
    servers: tuple[PostgresServer, PostgresServer]
    primary: PostgresServer
    standby: PostgresServer | None
    _run: RunFolder = field(repr=False)
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)
    timings: list[tuple[str, float]] = field(default_factory=list)

    # --- starting and removing ------------------------------------------------------------

    @classmethod
    async def launch(cls, run: RunFolder) -> PostgresPair:
        """initdb a primary, clone a standby from it with pg_basebackup, start both, and wait
        until the standby streams as the synchronous one. On failure, everything started is
        removed again."""
        began = time.monotonic()
        folder, _ = run.subfolder("postgres")
        account = pwd.getpwnam(OS_USER)
        os.chown(folder, account.pw_uid, account.pw_gid)
        sockets = folder / "sockets"
        sockets.mkdir(mode=0o700)
        os.chown(sockets, account.pw_uid, account.pw_gid)
        servers = (
            PostgresServer("pg0", free_port(), folder / "pg0"),
            PostgresServer("pg1", free_port(), folder / "pg1"),
        )
        pair = cls(folder, servers, primary=servers[0], standby=servers[1], _run=run)
        try:
            await pair._initdb(servers[0])
            await pair._start(servers[0])
            await pair._clone(servers[1], source=servers[0])
            await pair._start(servers[1])
            await pair._make_synchronous(servers[1])
        except BaseException:
            await pair.destroy()
            raise
        pair._took("start primary and standby", began)
        return pair

    async def destroy(self) -> None:
        """Kill both servers (their data goes with them) and remove the folder."""
        for process in self._processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        for process in self._processes.values():
            await asyncio.to_thread(process.wait, 10)
        self._processes.clear()
        await asyncio.to_thread(kill_processes_of, self.folder)
        await asyncio.to_thread(shutil.rmtree, self.folder, True)

    # --- addresses and connections ------------------------------------------------------------

    def dsn(self, database: str = "postgres") -> str:
        """Both servers in libpq's multi-host form, asking for the writable one: the
        DATABASE_URL of a service that must follow a failover."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.servers)
        return f"postgresql://{SUPERUSER}@{hosts}/{database}?target_session_attrs=read-write"

    async def admin(self, database: str = "postgres") -> asyncpg.Connection:
        """A superuser connection to the current primary; the caller closes it."""
        return await asyncpg.connect(self.primary.dsn(database), timeout=10)

    async def create_database(self, name: str) -> None:
        """Create a database on the primary, and wait until the standby has replayed it.

        Not only tidiness: asyncpg 0.32 moves on to the next host of a multi-host DSN only when a
        host refuses the connection or answers "cannot connect now"; a standby listed first that
        answers "database does not exist" fails the whole connect."""
        admin = await self.admin()
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        standby = self.standby
        if standby is not None and self._alive(standby):
            await wait_until(
                lambda: _has_database(standby, name),
                what=f"the standby to replay CREATE DATABASE {name}",
            )

    async def drop_database(self, name: str) -> None:
        admin = await self.admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    async def replication(self) -> list[dict[str, object]]:
        """The primary's pg_stat_replication: application_name, state, sync_state, ..."""
        admin = await self.admin()
        try:
            return [dict(r) for r in await admin.fetch("SELECT * FROM pg_stat_replication")]
        finally:
            await admin.close()

    def running(self) -> list[PostgresServer]:
        return [s for s in self.servers if self._alive(s)]

    # --- faults ---------------------------------------------------------------------------

    async def kill_primary(self) -> PostgresServer:
        """SIGKILL the primary's postmaster (its pid from postmaster.pid), then wait until its
        children, which notice their postmaster's death, have exited too. Returns the server
        killed; it stays `primary` until `promote_standby()`."""
        began = time.monotonic()
        server = self.primary
        await self.kill(server)
        self._took(f"kill primary {server.name}", began)
        return server

    async def kill(self, server: PostgresServer) -> None:
        """SIGKILL one server's postmaster and wait until all its processes are gone."""
        pid = server.postmaster_pid()
        process = self._processes.get(server.name)
        if pid is None or process is None or process.pid != pid or process.poll() is not None:
            raise AssertionError(f"{server.name} is not running (postmaster.pid: {pid})")
        children = children_of(pid)
        os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(process.wait, 10)

        async def orphans_gone() -> bool:
            return not any_alive(children)

        try:
            await wait_until(orphans_gone, deadline=10, what=f"{server.name}'s backends to exit")
        except AssertionError:
            # A backend that does not notice would keep the data directory from starting again.
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            raise

    async def promote_standby(self) -> PostgresServer:
        """`pg_ctl promote` the standby and wait until it accepts writes; it becomes `primary`,
        and `standby` is None. Returns the new primary."""
        began = time.monotonic()
        if self.standby is None or not self._alive(self.standby):
            raise AssertionError("there is no running standby to promote")
        server = self.standby
        await self._as_postgres(
            str(PG_BIN / "pg_ctl"), "promote", "-D", str(server.data_dir), "-w", "-t", "60"
        )
        await wait_until(
            lambda: _writable(server), deadline=START_DEADLINE, what=f"{server.name} to take writes"
        )
        self.primary, self.standby = server, None
        self._took(f"promote {server.name}", began)
        return server

    async def rejoin_as_standby(self, server: PostgresServer) -> None:
        """Bring a stopped server (the old primary, after a promotion) back as the synchronous
        standby of the current primary: pg_rewind it (a fresh pg_basebackup when that fails),
        start it, and wait until it streams as the synchronous standby."""
        began = time.monotonic()
        if self._alive(server) or server == self.primary:
            raise AssertionError(f"{server.name} must be a stopped server other than the primary")
        primary = self.primary
        admin = await self.admin()
        try:
            # pg_rewind reads the source's timeline from its control file, which a promotion
            # updates only at its next checkpoint.
            await admin.execute("CHECKPOINT")
        finally:
            await admin.close()
        try:
            await self._as_postgres(
                str(PG_BIN / "pg_rewind"),
                f"--target-pgdata={server.data_dir}",
                f"--source-server=host=127.0.0.1 port={primary.port} user={SUPERUSER} "
                "dbname=postgres",
                "--no-sync",
            )
            how = "pg_rewind"
        except AssertionError as failed:
            logger.warning("pg_rewind of %s failed, cloning it afresh: %s", server.name, failed)
            await asyncio.to_thread(shutil.rmtree, server.data_dir)
            await self._clone(server, source=primary)
            how = "pg_basebackup"
        else:
            self._configure_standby(server, source=primary)
        await self._start(server)
        self.standby = server
        await self._make_synchronous(server)
        self._took(f"rejoin {server.name} as standby ({how})", began)

    async def start(self, server: PostgresServer) -> None:
        """Start a killed server again in the role it had (a primary runs crash recovery)."""
        began = time.monotonic()
        await self._start(server)
        if server == self.standby:
            await self._make_synchronous(server)
        self._took(f"start {server.name}", began)

    async def heal(self) -> None:
        """Back to a primary with a synchronous standby: start a killed server that kept its
        role, and rejoin one that lost it to a promotion."""
        for server in self.servers:
            if not self._alive(server):
                if server in (self.primary, self.standby):
                    await self.start(server)
                else:
                    await self.rejoin_as_standby(server)
        if self.standby is None:
            raise AssertionError("no standby to heal with")
        await self.wait_for_sync_standby()

    async def wait_for_sync_standby(self, deadline: float = 30.0) -> dict[str, object]:
        """Until the primary's pg_stat_replication shows the standby streaming as `sync`."""
        standby = self.standby
        if standby is None:
            raise AssertionError("there is no standby")

        async def synchronous() -> dict[str, object] | None:
            for row in await self.replication():
                if (
                    row["application_name"] == standby.name
                    and row["state"] == "streaming"
                    and row["sync_state"] == "sync"
                ):
                    return row
            return None

        return await wait_until(
            synchronous, deadline=deadline, what=f"{standby.name} streaming as sync standby"
        )

    # --- internals ------------------------------------------------------------------------

    async def _as_postgres(self, *args: str, within: float = 120.0) -> str:
        """Run a PostgreSQL program as the postgres OS user; fail on a non-zero exit."""
        return await run_checked(
            *args, env=self._environ(), within=within, as_user=OS_USER, cwd=self.folder
        )

    def _environ(self) -> dict[str, str]:
        return {
            "PATH": f"{PG_BIN}:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(self.folder),
            **self._run.environ(self.folder),
        }

    async def _initdb(self, server: PostgresServer) -> None:
        await self._as_postgres(
            str(PG_BIN / "initdb"),
            "-D",
            str(server.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            # Test data of one run: nothing to lose if the machine crashed while initdb wrote it.
            "--no-sync",
            "--no-instructions",
        )
        with (server.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(SETTINGS.format(sockets=self.folder / "sockets"))
        (server.data_dir / "pg_hba.conf").write_text(HBA)

    async def _clone(self, server: PostgresServer, source: PostgresServer) -> None:
        await self._as_postgres(
            str(PG_BIN / "pg_basebackup"),
            "-d",
            f"host=127.0.0.1 port={source.port} user={SUPERUSER}",
            "-D",
            str(server.data_dir),
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-sync",
        )
        self._configure_standby(server, source)

    def _configure_standby(self, server: PostgresServer, source: PostgresServer) -> None:
        """Follow `source`, named as `server` (so the primary can make it its synchronous
        standby), and wait for no standby of its own once promoted. The last line of
        postgresql.auto.conf wins over what pg_basebackup or pg_rewind put there."""
        (server.data_dir / "standby.signal").touch()
        with (server.data_dir / "postgresql.auto.conf").open("a") as auto:
            auto.write(
                f"primary_conninfo = 'host=127.0.0.1 port={source.port} user={SUPERUSER} "
                f"application_name={server.name}'\n"
                "synchronous_standby_names = ''\n"
            )

    async def _start(self, server: PostgresServer) -> None:
        if self._alive(server):
            raise AssertionError(f"{server.name} is already running")
        process = self._spawn(server)
        self._processes[server.name] = process

        async def accepting() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"{server.name} exited with {process.returncode}:\n"
                    + server.log_file.read_text(errors="replace")[-3000:]
                )
            try:
                conn = await asyncpg.connect(server.dsn(), timeout=5)
            except (OSError, asyncpg.PostgresError):
                return False
            await conn.close()
            return True

        await wait_until(
            accepting, deadline=START_DEADLINE, interval=0.1, what=f"{server.name} to accept"
        )

    def _spawn(self, server: PostgresServer) -> subprocess.Popen[bytes]:
        """The postmaster, as the postgres OS user, in a session of its own (so that destroy()
        can kill its whole process group), its output appended to the server's log."""
        account = pwd.getpwnam(OS_USER)
        with server.log_file.open("ab") as log:
            return subprocess.Popen(
                [
                    str(PG_BIN / "postgres"),
                    "-D",
                    str(server.data_dir),
                    "-c",
                    f"port={server.port}",
                    "-c",
                    f"cluster_name={server.name}",
                ],
                user=account.pw_uid,
                group=account.pw_gid,
                extra_groups=[],
                cwd=self.folder,
                env=self._environ(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def _make_synchronous(self, standby: PostgresServer) -> None:
        admin = await self.admin()
        try:
            await admin.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{standby.name}'")
            await admin.execute("SELECT pg_reload_conf()")
        finally:
            await admin.close()
        await self.wait_for_sync_standby()

    def _alive(self, server: PostgresServer) -> bool:
        process = self._processes.get(server.name)
        return process is not None and process.poll() is None

    def _took(self, what: str, began: float) -> None:
        seconds = time.monotonic() - began
        self.timings.append((what, seconds))
        logger.info("postgres pair: %s took %.1fs", what, seconds)


async def _writable(server: PostgresServer) -> bool:
    try:
        conn = await asyncpg.connect(server.dsn(), timeout=5)
    except (OSError, asyncpg.PostgresError):
        return False
    try:
        if await conn.fetchval("SELECT pg_is_in_recovery()"):
            return False
        # Assigning a transaction id is a write: refused while still read-only.
        await conn.fetchval("SELECT txid_current()")
        return True
    except asyncpg.PostgresError:
        return False
    finally:
        await conn.close()


async def _has_database(server: PostgresServer, name: str) -> bool:
    conn = await asyncpg.connect(server.dsn(), timeout=5)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()
