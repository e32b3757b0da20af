"""A Docker engine for the compose tests: the one that answers already, or one of our own.

This kind of machine has no engine running but can have one: Debian's `docker.io` (dockerd 20.10)
and `docker-compose` (v1.29) install and run as root. When the tests start dockerd themselves they
remember its pid and stop only that process, and then put the network back as it was: dockerd
leaves its iptables chains, its rules and a FORWARD policy of DROP, `docker0` and
`net.ipv4.ip_forward=1` behind, which would break later tests that route through network
namespaces. Only what dockerd added is removed; rules anybody else added in the meantime stay.

Bookworm has no compose v2 plugin, and the README says `docker compose`: `compose_environment`
gives a private DOCKER_CONFIG whose CLI-plugin shim hands `docker compose ...` to
`docker-compose ...`, so the tests run the README's commands as written.

Run by hand: `python -m tests.support.docker_engine start|stop` (the pid and the network as it
was are kept under /run/acme-orders-dockerd/, so `stop` can come from another process).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from acme_orders.core.runtime import pid_alive

STATE_DIR = Path("/run/acme-orders-dockerd")
PID_FILE = STATE_DIR / "dockerd.pid"
# The pid of the process that started it: while that one lives, the dockerd is its to stop.
OWNER_FILE = STATE_DIR / "owner.pid"
NETWORK_FILE = STATE_DIR / "network-before.json"
LOG_FILE = Path("/var/log/acme-orders-dockerd.log")
PACKAGES = {"dockerd": "docker.io", "docker-compose": "docker-compose", "iptables": "iptables"}
IPTABLES_TABLES = ("filter", "nat")
# What dockerd names its own: its chains, the default bridge, and one bridge per user network.
DOCKER_CHAIN = re.compile(r"^DOCKER")
DOCKER_INTERFACE = re.compile(r"^(docker0|br-[0-9a-f]{12})$")
START_DEADLINE = 60.0
STOP_DEADLINE = 30.0

SHIM = """#!/bin/sh
# `docker compose ...` for a Docker CLI without the compose v2 plugin: hands over to docker-compose
# v1 (Debian bookworm's), which takes the same subcommands. Made by acme-orders' tests.
if [ "$1" = docker-cli-plugin-metadata ]; then
    echo '{"SchemaVersion": "0.1.0", "Vendor": "acme-orders tests", "Version": "v1-shim",
           "ShortDescription": "docker compose, handed to docker-compose v1"}'
    exit 0
fi
shift
exec {compose} "$@"
"""


class EngineUnavailableError(Exception):
    """No engine answers and none can be had here; the message says why."""


@dataclass(frozen=True)
class Engine:
    """The engine the tests use; `started_pid` is set when the tests started it themselves."""

    started_pid: int | None


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.returncode == 0


def install_packages() -> None:
    missing = [package for command, package in PACKAGES.items() if shutil.which(command) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise EngineUnavailableError(
            f"no Docker engine answers, and {', '.join(missing)} cannot be installed here "
            "(needs root and apt-get)"
        )
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *missing]
    if subprocess.run(install, capture_output=True, env=environment, check=False).returncode:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
        result = subprocess.run(install, capture_output=True, text=True, env=environment)
        if result.returncode:
            raise EngineUnavailableError(
                f"apt-get install {' '.join(missing)} failed: {result.stderr}"
            )


def uplink_mtu() -> int | None:
    """The MTU of the interface of the default route: containers' packets must fit through it
    (this machine's eth0 has 1400, docker0 would have 1500)."""
    route = subprocess.run(
        ["ip", "-j", "route", "show", "default"], capture_output=True, text=True, check=False
    )
    try:
        device = json.loads(route.stdout)[0]["dev"]
    except (ValueError, IndexError, KeyError):
        return None
    mtu = Path(f"/sys/class/net/{device}/mtu")
    return int(mtu.read_text()) if mtu.exists() else None


def iptables_rules(table: str) -> list[str]:
    result = subprocess.run(
        ["iptables", "-t", table, "-S"], capture_output=True, text=True, check=True
    )
    return result.stdout.splitlines()


def network_snapshot() -> dict[str, object]:
    return {
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
        "policies": {
            table: [line for line in iptables_rules(table) if line.startswith("-P ")]
            for table in IPTABLES_TABLES
        },
        "interfaces": sorted(os.listdir("/sys/class/net")),
    }


def is_dockers(rule: str) -> bool:
    """A rule dockerd adds: one that jumps to or lives in its chains, or names its bridges."""
    words = rule.split()
    if len(words) > 1 and DOCKER_CHAIN.match(words[1]):
        return True
    for flag, value in itertools.pairwise(words):
        if flag == "-j" and DOCKER_CHAIN.match(value):
            return True
        if flag in {"-i", "-o"} and DOCKER_INTERFACE.match(value):
            return True
    return False


def restore_network(before: dict[str, object]) -> None:
    """Remove what dockerd left behind, and only that."""
    for table in IPTABLES_TABLES:
        rules = iptables_rules(table)
        for rule in rules:
            if rule.startswith("-A ") and is_dockers(rule):
                delete = ["iptables", "-t", table, "-D", *rule.split()[1:]]
                subprocess.run(delete, capture_output=True, check=False)
        for rule in rules:
            words = rule.split()
            if words[0] == "-N" and DOCKER_CHAIN.match(words[1]):
                subprocess.run(["iptables", "-t", table, "-F", words[1]], check=False)
                subprocess.run(["iptables", "-t", table, "-X", words[1]], check=False)
        policies = before["policies"]
        assert isinstance(policies, dict)
        for policy in policies[table]:
            _, chain, target = policy.split()
            subprocess.run(["iptables", "-t", table, "-P", chain, target], check=True)
    # ip_forward is one switch for the whole machine: while somebody else still forwards (their
    # FORWARD rules remain, such as a test's network namespace with NAT), it stays on for them.
    others_forward = any(rule.startswith("-A FORWARD") for rule in iptables_rules("filter"))
    interfaces = before["interfaces"]
    assert isinstance(interfaces, list)
    for interface in sorted(os.listdir("/sys/class/net")):
        if DOCKER_INTERFACE.match(interface) and interface not in interfaces:
            subprocess.run(["ip", "link", "delete", interface], capture_output=True, check=False)
    if not others_forward:
        Path("/proc/sys/net/ipv4/ip_forward").write_text(f"{before['ip_forward']}\n")


def start_engine() -> Engine:
    """The engine that answers, or one started here; EngineUnavailableError if neither can be
    had."""
    if PID_FILE.exists():
        pid = int(PID_FILE.read_text())
        owner = int(OWNER_FILE.read_text()) if OWNER_FILE.exists() else 0
        if _is_dockerd(pid) and docker_answers():
            if owner and pid_alive(owner):
                # Another run's, still in use by it: used here too, and left to it to stop.
                return Engine(started_pid=None)
            # Left running by a run that died: this run stops it when it is done.
            OWNER_FILE.write_text(str(os.getpid()))
            return Engine(started_pid=pid)
        # Ours and gone: put the network back from the state that run saw before it.
        stop_engine()
    if docker_answers():
        return Engine(started_pid=None)
    install_packages()
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    NETWORK_FILE.write_text(json.dumps(network_snapshot()))
    command = [shutil.which("dockerd") or "dockerd", "--log-level", "warn"]
    mtu = uplink_mtu()
    if mtu:
        command += ["--mtu", str(mtu)]
    with LOG_FILE.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    PID_FILE.write_text(str(process.pid))
    OWNER_FILE.write_text(str(os.getpid()))
    give_up = time.monotonic() + START_DEADLINE
    while not docker_answers():
        if process.poll() is not None:
            stop_engine()
            raise EngineUnavailableError(
                f"dockerd exited with {process.returncode}; see {LOG_FILE}"
            )
        if time.monotonic() > give_up:
            stop_engine()
            raise EngineUnavailableError(f"dockerd did not answer within {START_DEADLINE}s")
        time.sleep(0.5)
    return Engine(started_pid=process.pid)


def stop_engine() -> None:
    """Stop the dockerd these tests started (if any), then put the network back."""
    if not PID_FILE.exists():
        return
    pid = int(PID_FILE.read_text())
    if _is_dockerd(pid):
        os.kill(pid, signal.SIGTERM)
        give_up = time.monotonic() + STOP_DEADLINE
        while _is_dockerd(pid) and time.monotonic() < give_up:
            time.sleep(0.2)
        if _is_dockerd(pid):
            os.kill(pid, signal.SIGKILL)
            while _is_dockerd(pid):
                time.sleep(0.2)
    if NETWORK_FILE.exists():
        restore_network(json.loads(NETWORK_FILE.read_text()))
        NETWORK_FILE.unlink()
    OWNER_FILE.unlink(missing_ok=True)
    PID_FILE.unlink()


def _is_dockerd(pid: int) -> bool:
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return name == "dockerd" and state != "Z"


def compose_environment(config_dir: Path) -> dict[str, str]:
    """The environment for the README's `docker compose` commands: the CLI's own plugin if it has
    one, else a private DOCKER_CONFIG with the shim."""
    environment = dict(os.environ)
    plugin = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, check=False
    )
    if plugin.returncode == 0:
        return environment
    compose = shutil.which("docker-compose")
    if compose is None:
        raise EngineUnavailableError("neither `docker compose` nor docker-compose is installed")
    plugins = config_dir / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    shim = plugins / "docker-compose"
    shim.write_text(SHIM.replace("{compose}", compose))
    shim.chmod(0o755)
    environment["DOCKER_CONFIG"] = str(config_dir)
    return environment


def main(argv: list[str]) -> int:
    if argv == ["start"]:
        engine = start_engine()
        print(f"dockerd started, pid {engine.started_pid}" if engine.started_pid else "in use")
        return 0
    if argv == ["stop"]:
        stop_engine()
        return 0
    print("usage: python -m tests.support.docker_engine start|stop", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
