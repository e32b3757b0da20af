"""The compose stack of a clean clone, driven with the README's own commands.

Each test run clones the repository into a folder of its own, `acmecompose<pid>` (the folder's
name is compose's project name, so its containers, network and volumes carry the run's pid), and
publishes every port on a free port of 127.0.0.1 through the compose file's own settings
(API_PORT, POSTGRES_PORT, ...), so it runs beside servers that hold the defaults. A run that died
leaves a project whose pid is gone; the next run removes it. Every command and its output go to
test-output/run-<pid>/compose.log.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acme_orders.core.runtime import pid_alive
from tests.support.processes import OUTPUT_DIR, free_port

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PATTERN = re.compile(r"^acmecompose(\d+)$")
PROJECT_LABEL = "com.docker.compose.project"
APP_IMAGE = "acme-orders:latest"
# What `docker compose up -d` starts, and the one-shot jobs among them.
SERVICES = {
    "postgres",
    "rabbitmq-definitions",
    "rabbitmq",
    "migrate",
    "orderapi",
    "orderpublisher",
    "inventory",
    "payment",
    "notification",
}
ONE_SHOT = {"rabbitmq-definitions", "migrate"}
COMMAND_TIMEOUT = 600.0


class ComposeError(AssertionError):
    """A command of the stack failed; the message holds its output."""


@dataclass
class ComposeStack:
    directory: Path
    environment: dict[str, str]
    ports: dict[str, int]
    transcript: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def project(self) -> str:
        return self.directory.name

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['API_PORT']}"

    def note(self, text: str) -> None:
        with self.transcript.open("a", encoding="utf-8") as log:
            log.write(text.rstrip("\n") + "\n")

    def shell(
        self,
        command: str,
        *,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT,
        extra_env: dict[str, str] | None = None,
        record: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """A command line as a user types it, in the clone, with the stack's environment; in the
        transcript unless `record` is false (the polling, which would drown the rest)."""
        started = time.monotonic()
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=self.directory,
            env=self.environment | (extra_env or {}),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        took = time.monotonic() - started
        if not record and not (check and result.returncode):
            return result
        prefix = " ".join(f"{k}={v}" for k, v in (extra_env or {}).items())
        self.note(
            f"$ {prefix + ' ' if prefix else ''}{command}   ({took:.1f}s, exit {result.returncode})"
        )
        self.note(result.stdout + result.stderr)
        if check and result.returncode:
            raise ComposeError(
                f"{command!r} exited with {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def in_terminal(self, command: str) -> str:
        """A command that wants a terminal (`docker exec -it ...`), run in a pseudo-terminal as
        a person would, tall enough that psql shows its result without a pager."""
        result = self.shell(
            "script --quiet --return --command "
            + shlex.quote(f"stty rows 200 cols 250; {command}")
            + " /dev/null < /dev/null"
        )
        return result.stdout.replace("\r\n", "\n").replace("\x00", "")

    def psql(self, sql: str) -> str:
        """One query's rows, unaligned (`|` between columns), as the schema's owner."""
        result = self.shell(
            "docker exec eda-postgres psql -U acme -d acme -X -A -t -v ON_ERROR_STOP=1 -c "
            + shlex.quote(sql)
        )
        return result.stdout.strip()

    def logs(self, container: str) -> str:
        result = self.shell(f"docker logs {container}", record=False)
        return result.stdout + result.stderr

    def containers(self) -> dict[str, dict[str, Any]]:
        """`docker inspect` of every container of the project, by compose service."""
        ids = self.shell(
            f"docker ps -a -q --filter label={PROJECT_LABEL}={self.project}", record=False
        ).stdout.split()
        if not ids:
            return {}
        inspected = json.loads(self.shell("docker inspect " + " ".join(ids), record=False).stdout)
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in inspected}

    def wait_until_up(self, deadline: float = 180.0) -> None:
        """Until every service is healthy and every one-shot job has exited 0."""
        give_up = time.monotonic() + deadline
        last: dict[str, str] = {}
        while True:
            found = self.containers()
            last = {name: describe(container) for name, container in found.items()}
            failed = {
                name: state
                for name, state in last.items()
                if name in ONE_SHOT and state.startswith("exited") and state != "exited 0"
            }
            if failed:
                self.record_logs()
                raise ComposeError(f"one-shot jobs failed: {failed}; see {self.transcript}")
            wanted = {
                name: "exited 0" if name in ONE_SHOT else "running healthy" for name in SERVICES
            }
            if all(last.get(name) == state for name, state in wanted.items()):
                return
            if time.monotonic() > give_up:
                self.record_logs()
                raise ComposeError(f"not up after {deadline}s: {last}; see {self.transcript}")
            time.sleep(1)

    def record_logs(self) -> None:
        """What the containers said, into the transcript, for a failure to be read."""
        self.shell("docker compose ps", check=False)
        self.shell("docker compose logs --no-color --tail=100", check=False)


def describe(container: dict[str, Any]) -> str:
    state = container["State"]
    if state["Status"] == "exited":
        return f"exited {state['ExitCode']}"
    health = state.get("Health", {}).get("Status", "no healthcheck")
    return f"{state['Status']} {health}"


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=check
    )


def remove_project(project: str) -> None:
    """Everything of a compose project, found by its label: containers, then networks and
    volumes (which a running container would hold)."""
    label = f"label={PROJECT_LABEL}={project}"
    containers = docker("ps", "-a", "-q", "--filter", label).stdout.split()
    if containers:
        docker("rm", "--force", "--volumes", *containers)
    networks = docker("network", "ls", "-q", "--filter", label).stdout.split()
    if networks:
        docker("network", "rm", *networks)
    volumes = docker("volume", "ls", "-q", "--filter", label).stdout.split()
    if volumes:
        docker("volume", "rm", "--force", *volumes)


def leftovers(project: str) -> dict[str, list[str]]:
    label = f"label={PROJECT_LABEL}={project}"
    return {
        "containers": docker("ps", "-a", "-q", "--filter", label).stdout.split(),
        "networks": docker("network", "ls", "-q", "--filter", label).stdout.split(),
        "volumes": docker("volume", "ls", "-q", "--filter", label).stdout.split(),
    }


def sweep_abandoned_projects() -> None:
    """Remove the projects of test runs whose process is gone."""
    listed = docker("ps", "-a", "--format", f'{{{{.Label "{PROJECT_LABEL}"}}}}').stdout.split()
    volumes = docker("volume", "ls", "--format", f'{{{{.Label "{PROJECT_LABEL}"}}}}').stdout
    for project in set(listed) | set(volumes.split()):
        match = PROJECT_PATTERN.match(project)
        if match and not pid_alive(int(match.group(1))):
            remove_project(project)


def names_in_the_way() -> list[str]:
    """Containers of another project that hold the documented names (eda-postgres, ...)."""
    found = docker(
        "ps",
        "-a",
        "--filter",
        "name=^eda-",
        "--format",
        f'{{{{.Names}}}} {{{{.Label "{PROJECT_LABEL}"}}}}',
    ).stdout.splitlines()
    return [line for line in found if line.strip()]


def clean_clone(base: Path) -> Path:
    """The repository's committed HEAD, cloned as a user would, into acmecompose<pid>."""
    directory = base / f"acmecompose{os.getpid()}"
    if directory.exists():
        shutil.rmtree(directory)
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(directory)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return directory


def new_stack(base: Path, environment: dict[str, str]) -> ComposeStack:
    ports = {
        name: free_port()
        for name in ("API_PORT", "POSTGRES_PORT", "RABBITMQ_PORT", "RABBITMQ_UI_PORT")
    }
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    transcript = OUTPUT_DIR / "compose.log"
    directory = clean_clone(base)
    # Nothing of the machine's own settings may leak into compose's interpolation but ours.
    environment = {
        k: v
        for k, v in environment.items()
        if not k.startswith(("POSTGRES_", "RABBITMQ_", "API_", "AUTH_", "PAYMENT_", "BIND_"))
    }
    environment |= {name: str(port) for name, port in ports.items()}
    return ComposeStack(directory, environment, ports, transcript)
