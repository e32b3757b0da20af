"""Bringing the system up for a benchmark, and down again: a fresh database and vhost of its own
(`acme_bench_<pid>_<hex>`), the five services as separate processes, all of it removed at the end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

import asyncpg

from acme_orders.core import database
from acme_orders.core.settings import Settings
from acme_orders.core.topology import QUEUES
from acme_orders_bench import scratch

logger = logging.getLogger(__name__)

NAME_PREFIX = "acme_bench_"
# Every product gets this much stock, so that no order of a run ends out of stock: the benchmark
# measures the happy path. It fits the integer column with room to spare.
BENCH_STOCK = 1_000_000_000
READY_DEADLINE = 60.0
WORKERS_WITH_METRICS = ("publisher", "inventory", "payment", "notification")
STOP_DEADLINE = 20.0


class SetupError(RuntimeError):
    """The benchmark cannot bring the system up; the message says why."""


@dataclass(frozen=True, slots=True)
class Scratch:
    """A database and a vhost of the same name, made for one benchmark run."""

    name: str
    settings: Settings  # DATABASE_URL and RABBITMQ_URL point at them
    servers: scratch.Servers  # where they were made, and are removed from

    @property
    def admin_url(self) -> str:
        return self.servers.admin_url


def servers(base: Settings, rabbitmqctl: tuple[str, ...]) -> scratch.Servers:
    """The benchmark makes its database with DATABASE_ADMIN_URL (or postgres on the server of
    DATABASE_URL), owned by DATABASE_URL's role, and its vhost with rabbitmqctl."""
    return scratch.Servers(base, database.admin_url(base), scratch.Rabbitmqctl(rabbitmqctl))


async def create_scratch(base: Settings, rabbitmqctl: tuple[str, ...]) -> Scratch:
    """Create, migrate and stock a fresh database, and a fresh vhost with the topology."""
    where = servers(base, rabbitmqctl)
    name = scratch.new_name(NAME_PREFIX)
    try:
        settings = await scratch.create_scratch(where, name, QUEUES)
        conn = await asyncpg.connect(settings.database_url, timeout=10)
        try:
            await conn.execute("UPDATE products SET stock_qty = $1", BENCH_STOCK)
        finally:
            await conn.close()
    except scratch.ScratchError as exc:
        raise SetupError(str(exc)) from exc
    except BaseException:
        await scratch.drop_scratch(where, name)
        raise
    logger.info("created database and vhost %s", name)
    return Scratch(name, settings, where)


async def drop_scratch(made: Scratch) -> None:
    """Drop the database and the vhost; each is attempted even if the other fails."""
    await scratch.drop_scratch(made.servers, made.name)
    logger.info("dropped database and vhost %s", made.name)


async def sweep_abandoned(base: Settings, rabbitmqctl: tuple[str, ...]) -> list[str]:
    """Drop the databases and vhosts of benchmark runs whose process is gone (killed with -9, the
    machine restarted): they would otherwise stay forever."""
    return await scratch.sweep_abandoned(servers(base, rabbitmqctl), NAME_PREFIX)


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
