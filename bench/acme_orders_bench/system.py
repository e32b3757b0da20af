"""Bringing the system up for a benchmark, and down again: a fresh database and vhost of its own
(`acme_bench_<pid>_<hex>`), the five services as separate processes, all of it removed at the end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import URLError
from urllib.parse import quote, unquote, urlsplit, urlunsplit
from urllib.request import urlopen

import asyncpg

from acme_orders.core import database, messaging
from acme_orders.core.runtime import pid_alive
from acme_orders.core.settings import Settings

logger = logging.getLogger(__name__)

NAME_PREFIX = "acme_bench_"
NAME_PATTERN = re.compile(rf"^{NAME_PREFIX}(\d+)_[0-9a-f]+$")
# Every product gets this much stock, so that no order of a run ends out of stock: the benchmark
# measures the happy path. It fits the integer column with room to spare.
BENCH_STOCK = 1_000_000_000
READY_DEADLINE = 60.0
WORKERS_WITH_METRICS = ("publisher", "inventory", "payment", "notification")
STOP_DEADLINE = 20.0


class SetupError(RuntimeError):
    """The benchmark cannot bring the system up; the message says why."""


def rabbitmqctl(command: Sequence[str], *args: str) -> str:
    """rabbitmqctl ARGS, run as COMMAND: ("rabbitmqctl",) where the broker runs on this machine,
    or a prefix that reaches it, such as ("docker", "exec", "CONTAINER", "rabbitmqctl")."""
    executable = shutil.which(command[0])
    if executable is None:
        raise SetupError(
            f"{command[0]} is not on PATH: the benchmark creates its vhost with rabbitmqctl "
            "(run it where RabbitMQ runs, as root or the rabbitmq user, or give --rabbitmqctl)"
        )
    result = subprocess.run(
        [executable, *command[1:], "-q", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise SetupError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def _with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), parts.query, ""))


def rabbitmq_user(settings: Settings) -> str:
    return unquote(urlsplit(settings.rabbitmq_url).username or "guest")


@dataclass(frozen=True, slots=True)
class Scratch:
    """A database and a vhost of the same name, made for one benchmark run."""

    name: str
    settings: Settings  # DATABASE_URL and RABBITMQ_URL point at them
    rabbitmqctl: tuple[str, ...]  # the command that made the vhost, and removes it

    @property
    def admin_url(self) -> str:
        return database.admin_url(self.settings)


def new_name() -> str:
    return f"{NAME_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"


async def create_scratch(
    base: Settings, rabbitmqctl_command: tuple[str, ...], *, declare_queues: bool = True
) -> Scratch:
    """Create, migrate and stock a fresh database, and a fresh vhost with the topology."""
    # Imported here: cli imports this package.
    from acme_orders.core.topology import QUEUES

    name = new_name()
    settings = base.model_copy(
        update={
            "database_url": _with_database(base.database_url, name),
            "rabbitmq_url": _with_vhost(base.rabbitmq_url, name),
        }
    )
    scratch = Scratch(name, settings, rabbitmqctl_command)
    try:
        # Creates the database with the admin DSN (and the role of DATABASE_URL if missing).
        await database.migrate(settings)
        await asyncio.to_thread(rabbitmqctl, rabbitmqctl_command, "add_vhost", name)
        await asyncio.to_thread(
            rabbitmqctl,
            rabbitmqctl_command,
            "set_permissions",
            "-p",
            name,
            rabbitmq_user(base),
            ".*",
            ".*",
            ".*",
        )
        if declare_queues:
            await messaging.declare_topology(settings, QUEUES)
        conn = await asyncpg.connect(settings.database_url, timeout=10)
        try:
            await conn.execute("UPDATE products SET stock_qty = $1", BENCH_STOCK)
        finally:
            await conn.close()
    except BaseException:
        await drop_scratch(scratch)
        raise
    logger.info("created database and vhost %s", name)
    return scratch


async def drop_scratch(scratch: Scratch) -> None:
    """Drop the database and the vhost; each is attempted even if the other fails."""
    try:
        admin = await asyncpg.connect(scratch.admin_url, timeout=10)
        try:
            statement = await admin.fetchval(
                "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', $1::text)", scratch.name
            )
            await admin.execute(statement)
        finally:
            await admin.close()
    finally:
        listed = await asyncio.to_thread(rabbitmqctl, scratch.rabbitmqctl, "list_vhosts", "name")
        if scratch.name in listed.split():
            await asyncio.to_thread(rabbitmqctl, scratch.rabbitmqctl, "delete_vhost", scratch.name)
    logger.info("dropped database and vhost %s", scratch.name)


async def sweep_abandoned(base: Settings, rabbitmqctl_command: tuple[str, ...]) -> list[str]:
    """Drop the databases and vhosts of benchmark runs whose process is gone (killed with -9, the
    machine restarted): they would otherwise stay forever."""
    admin = await asyncpg.connect(database.admin_url(base), timeout=10)
    try:
        databases = [
            r["datname"]
            for r in await admin.fetch(
                "SELECT datname FROM pg_database WHERE starts_with(datname, $1)", NAME_PREFIX
            )
        ]
    finally:
        await admin.close()
    vhosts = (
        await asyncio.to_thread(rabbitmqctl, rabbitmqctl_command, "list_vhosts", "name")
    ).split()
    names = sorted(set(databases) | {v for v in vhosts if v.startswith(NAME_PREFIX)})
    swept = []
    for name in names:
        match = NAME_PATTERN.match(name)
        if match and not pid_alive(int(match.group(1))):
            settings = base.model_copy(
                update={"database_url": _with_database(base.database_url, name)}
            )
            await drop_scratch(Scratch(name, settings, rabbitmqctl_command))
            swept.append(name)
    return swept


@dataclass
class Service:
    """One `acme-orders run SERVICE` process, its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Services:
    api_url: str
    log_dir: Path
    running: dict[str, Service] = field(default_factory=dict)

    @property
    def pids(self) -> dict[str, int]:
        return {name: s.process.pid for name, s in self.running.items()}

    def check_running(self) -> None:
        """Fail at once, rather than wait for orders no one will finish, when a service died."""
        for service in self.running.values():
            if service.process.poll() is not None:
                raise SetupError(
                    f"{service.name} exited with code {service.process.returncode} during the "
                    f"run; its log ends:\n{service.log()[-3000:]}"
                )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_environment(
    settings: Settings, port: int, payment_success_rate: float
) -> dict[str, str]:
    """The benchmark's environment, pointed at the scratch database and vhost. Other settings
    (DB_POOL_SIZE, PREFETCH_COUNT, OUTBOX_BATCH_SIZE, ...) come through from ours, so a tuning
    experiment sets them as usual."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "RABBITMQ_"))}
    env.update(
        DATABASE_URL=settings.database_url,
        RABBITMQ_URL=settings.rabbitmq_url,
        API_HOST="127.0.0.1",
        API_PORT=str(port),
        PAYMENT_SUCCESS_RATE=repr(payment_success_rate),
        # Readiness is read from the workers' "ready:" line, which is logged at INFO.
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        # wrk sends no API key and places thousands of orders a second from one address: the
        # bench measures the pipeline, not the 401s and 429s it would get otherwise.
        AUTH_DISABLED="1",
        RATE_LIMIT_ORDERS_PER_SECOND="0",
        # Each worker's /metrics and /health on a free port, as deployed (idle unless scraped),
        # and clear of a system already running here on the default ports.
        METRICS_HOST="127.0.0.1",
        **{f"{name.upper()}_METRICS_PORT": str(free_port()) for name in WORKERS_WITH_METRICS},
    )
    return env


# A second (third...) process of a service is named `<service>#2` (`#3`...).
INSTANCE_MARK = "#"


def instance_names(services: tuple[str, ...], instances: int) -> tuple[str, ...]:
    """The processes to start: the API once, every other service `instances` times."""
    return tuple(
        name if n == 1 else f"{name}{INSTANCE_MARK}{n}"
        for name in services
        for n in range(1, (1 if name == "api" else instances) + 1)
    )


async def start_services(names: tuple[str, ...], env: dict[str, str], log_dir: Path) -> Services:
    """Start every service and wait until each is ready: the API answers /health with 200, a
    worker has logged its "ready:" line. Stops them all again if one does not come up. A second
    process of a service (`inventory#2`) serves no metrics: the port is the first one's."""
    services = Services(f"http://127.0.0.1:{env['API_PORT']}", log_dir)
    try:
        for name in names:
            service, mark, _ = name.partition(INSTANCE_MARK)
            environ = env | {f"{service.upper()}_METRICS_PORT": "0"} if mark else env
            services.running[name] = _spawn(name, environ, log_dir)
        await asyncio.gather(*(_wait_ready(services, s) for s in services.running.values()))
    except BaseException:
        await stop_services(services)
        raise
    return services


def _spawn(name: str, env: dict[str, str], log_dir: Path) -> Service:
    """`acme-orders run SERVICE` in the background for the process NAME (`SERVICE` or
    `SERVICE#N`), its stdout and stderr in NAME.log."""
    log_path = log_dir / f"{name.replace(INSTANCE_MARK, '-')}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "acme_orders", "run", name.partition(INSTANCE_MARK)[0]],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Service(name, process, log_path)


def _healthy(api_url: str) -> bool:
    try:
        with urlopen(f"{api_url}/health", timeout=2) as response:  # noqa: S310 (our own URL)
            return bool(response.status == 200)
    except (URLError, OSError):
        return False


async def _wait_ready(services: Services, service: Service) -> None:
    give_up = time.monotonic() + READY_DEADLINE
    while True:
        if service.process.poll() is not None:
            raise SetupError(
                f"{service.name} exited with code {service.process.returncode} before it was "
                f"ready; its log ends:\n{service.log()[-3000:]}"
            )
        if service.name == "api":
            if await asyncio.to_thread(_healthy, services.api_url):
                return
        elif "ready:" in service.log():
            return
        if time.monotonic() > give_up:
            raise SetupError(
                f"{service.name} was not ready after {READY_DEADLINE:.0f}s; its log ends:\n"
                + service.log()[-3000:]
            )
        await asyncio.sleep(0.1)


async def stop_services(services: Services) -> dict[str, int]:
    """SIGTERM to all, then SIGKILL to any still running after STOP_DEADLINE; the exit codes."""
    for service in services.running.values():
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
    give_up = time.monotonic() + STOP_DEADLINE
    codes: dict[str, int] = {}
    for name, service in services.running.items():
        try:
            codes[name] = await asyncio.to_thread(
                service.process.wait, max(0.1, give_up - time.monotonic())
            )
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0fs; killing it", name, STOP_DEADLINE)
            service.process.kill()
            codes[name] = await asyncio.to_thread(service.process.wait)
    return codes
