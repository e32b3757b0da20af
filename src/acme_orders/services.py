"""The one registry of the system's services: each one's name, what runs it, and the queues it
reads. The CLI starts them from here; the benchmark and the tests list them from here.

What runs a service is named, not imported ("module:function"), and only the process that runs it
imports it: the API's process never loads a consumer's handlers, nor a consumer the API.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from acme_orders.core import topology
from acme_orders.core.runtime import ServiceMain, configure_logging, run_service
from acme_orders.core.settings import get_settings
from acme_orders.core.topology import QueueSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    # "module:function": for the API a function that serves it and returns an exit code, for the
    # workers a ServiceMain that run_service runs until stopped.
    runs: str
    queues: tuple[QueueSpec, ...] = ()

    def load(self) -> Callable[..., Any]:
        module, _, function = self.runs.partition(":")
        target: Callable[..., Any] = getattr(importlib.import_module(module), function)
        return target


REGISTRY: dict[str, Service] = {
    topology.API: Service(topology.API, "acme_orders.order_api.service:run"),
    topology.PUBLISHER: Service(topology.PUBLISHER, "acme_orders.publisher.service:main"),
    **{
        name: Service(name, f"acme_orders.{name}.service:main", queues)
        for name, queues in topology.SUBSCRIPTIONS.items()
    },
}
SERVICES: tuple[str, ...] = tuple(REGISTRY)
# The services run by run_service: all but the API, which uvicorn serves.
WORKERS: tuple[str, ...] = tuple(name for name in SERVICES if name != topology.API)


def run(name: str) -> int:
    """Run one service in the foreground until it is stopped; its exit code."""
    service = REGISTRY[name]
    if name == topology.API:
        code: int = service.load()()
        return code
    main: ServiceMain = service.load()
    run_service(name, main)
    return 0


def run_all() -> int:
    """Each service in its own process; SIGINT or SIGTERM stops them all, and so does any one of
    them exiting. Returns 0 only when every service stopped cleanly."""
    settings = get_settings()
    # Five services on one terminal, or through `tee` into one file: a person reads it, so
    # readable text (each line tagged with its service) unless LOG_FORMAT asks for JSON.
    log_format = "text" if settings.log_format == "auto" else settings.log_format
    configure_logging("run-all", settings.log_level, log_format)
    environment = {**os.environ, "LOG_FORMAT": log_format}
    children = {
        name: subprocess.Popen([sys.executable, "-m", "acme_orders", "run", name], env=environment)
        for name in SERVICES
    }
    stopping = False

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        logger.info("%s received; stopping all services", signal.Signals(signum).name)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    logger.info("started %s", ", ".join(f"{n} (pid {p.pid})" for n, p in children.items()))

    exit_code = 0
    while not stopping:
        exited = {name: p.returncode for name, p in children.items() if p.poll() is not None}
        if exited:
            name, exit_code = next(iter(exited.items()))
            logger.error("%s exited with code %s; stopping the others", name, exit_code)
            break
        time.sleep(0.2)

    for child in children.values():
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + settings.shutdown_timeout + 5
    for name, child in children.items():
        try:
            code = child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in time; killing it", name)
            child.kill()
            code = child.wait()
        # uvicorn re-raises the signal once it has shut down gracefully: dying of the signal we
        # sent is a clean stop too.
        if code not in (0, -signal.SIGTERM, -signal.SIGINT):
            logger.warning("%s exited with code %s", name, code)
            exit_code = exit_code or code
    logger.info("all services stopped")
    return exit_code
