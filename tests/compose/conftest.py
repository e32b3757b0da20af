"""A Docker engine, the stand-in images when no registry can be reached, and the compose stack of
a clean clone, for the tests of `docker compose up -d` as users run it.

Skipped, with the reason in the test summary, when TEST_COMPOSE=0 or when no engine can be had
here (not root, no apt-get); on this kind of machine they run in CI."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import docker_engine as engine
from tests.support import standins
from tests.support.compose_stack import (
    APP_IMAGE,
    ComposeStack,
    docker,
    names_in_the_way,
    new_stack,
    remove_project,
    sweep_abandoned_projects,
)


def report(config: pytest.Config, line: str) -> None:
    """A line on the terminal, whatever pytest captures: how long each step took."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"[compose] {line}")


# The documented container names (eda-postgres, ...) exist once per engine: test runs on one
# machine take turns, each holding this lock for its compose tests.
LOCK = Path("/run/acme-orders-compose-test.lock")
LOCK_DEADLINE = 1800.0


@contextlib.contextmanager
def taking_turns(config: pytest.Config) -> Iterator[None]:
    with LOCK.open("a") as lock:
        give_up = time.monotonic() + LOCK_DEADLINE
        waited = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    report(config, f"another run's compose tests are going; waiting ({LOCK})")
                    waited = True
                if time.monotonic() > give_up:
                    pytest.fail(f"another run held {LOCK} for {LOCK_DEADLINE:.0f}s")
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="package")
def docker_engine(request: pytest.FixtureRequest) -> Iterator[engine.Engine]:
    if os.environ.get("TEST_COMPOSE") == "0":
        pytest.skip("TEST_COMPOSE=0: the compose tests are turned off")
    with taking_turns(request.config):
        started = time.monotonic()
        try:
            running = engine.start_engine()
        except engine.EngineUnavailableError as exc:
            pytest.skip(f"no Docker engine: {exc}")
        which = f"started dockerd, pid {running.started_pid}" if running.started_pid else "in use"
        report(request.config, f"Docker engine: {which} ({time.monotonic() - started:.1f}s)")
        try:
            yield running
        finally:
            if running.started_pid:
                engine.stop_engine()
                report(
                    request.config, "stopped our dockerd; iptables, docker0, ip_forward put back"
                )


@pytest.fixture(scope="package")
def stack(docker_engine: engine.Engine, request: pytest.FixtureRequest) -> Iterator[ComposeStack]:
    """`docker compose up -d` from a clean clone, with nothing of an earlier build to reuse."""
    started = time.monotonic()
    for image, what in standins.ensure_standins(log=lambda _: None).items():
        report(request.config, f"{image}: {what}")
    report(request.config, f"images ready ({time.monotonic() - started:.1f}s)")
    sweep_abandoned_projects()
    in_the_way = names_in_the_way()
    if in_the_way:
        pytest.fail(
            "containers of another compose project hold the documented names: "
            + "; ".join(in_the_way)
            + ". Stop that stack first (docker compose down)."
        )
    # A user's first `up` builds the image; so does this one, from the clone's code.
    if docker("image", "inspect", APP_IMAGE, check=False).returncode == 0:
        docker("image", "rm", APP_IMAGE)
    with tempfile.TemporaryDirectory(prefix="acme-compose-") as base:
        config = Path(base) / "docker-config"
        environment = engine.compose_environment(config)
        compose_stack = new_stack(Path(base), environment)
        try:
            began = time.monotonic()
            compose_stack.shell("docker compose up -d")
            compose_stack.timings["up -d (with the image build)"] = time.monotonic() - began
            compose_stack.wait_until_up()
            compose_stack.timings["up -d until every container is healthy"] = (
                time.monotonic() - began
            )
            yield compose_stack
        finally:
            compose_stack.shell("docker compose down -v", check=False)
            remove_project(compose_stack.project)
            for step, seconds in compose_stack.timings.items():
                report(request.config, f"{step}: {seconds:.1f}s")
            report(request.config, f"transcript: {compose_stack.transcript}")
