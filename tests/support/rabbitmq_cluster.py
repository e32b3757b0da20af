"""A RabbitMQ cluster of the test run's own: three nodes on loopback, started from Debian's
`rabbitmq-server`, with controls to kill, stop and start its nodes.

Nothing here can reach the machine's own node (`rabbit@localhost` on 5672, other developers'
test runs use it):

- node names of the run's own, `acme<pid>a@localhost` (`localhost`, so the machine's hostname
  does not matter), AMQP and distribution ports picked free on 127.0.0.1, and every listener
  bound to 127.0.0.1 only;
- an Erlang cookie of the cluster's own, in a HOME of its own: even a mistyped node name could
  not talk to the machine's node, whose cookie differs;
- an epmd of the cluster's own on a free port (`ERL_EPMD_PORT`), so the machine's epmd knows
  nothing of our nodes and a restart of it cannot strand them;
- `RABBITMQ_CONF_ENV_FILE` pointing at an empty file of ours, so /etc/rabbitmq/rabbitmq-env.conf
  (which names the machine's node) is never read, and no enabled plugins;
- every `rabbitmqctl` runs with `-n <one of our nodes>` and our cookie and epmd.

The nodes form the cluster by `classic_config` peer discovery: the first node boots alone, then
the others boot at once and join it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from tests.support.processes import free_port, run_checked
from tests.support.run_folder import RunFolder, kill_processes_of
from tests.support.waiting import wait_until

logger = logging.getLogger(__name__)

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
SERVER = RABBITMQ_BIN / "rabbitmq-server"
CTL = RABBITMQ_BIN / "rabbitmqctl"
# How long a node may take to boot: about 6 s alone on two cores, 10 s with two booting at once.
BOOT_DEADLINE = 90.0


@dataclass(frozen=True)
class RabbitNode:
    """One node: its Erlang name, its ports on 127.0.0.1, and its folder (data, logs, pid file)."""

    name: str
    amqp_port: int
    dist_port: int
    folder: Path

    @property
    def pid_file(self) -> Path:
        return self.folder / "beam.pid"

    @property
    def log_file(self) -> Path:
        """The node's own log (RabbitMQ writes `<node>.log` in RABBITMQ_LOG_BASE)."""
        return self.folder / "log" / f"{self.name}.log"

    @property
    def console_file(self) -> Path:
        """What the server script printed: the first place to look when a node does not boot."""
        return self.folder / "console.log"


@dataclass(frozen=True)
class QueueInfo:
    """A queue as `rabbitmqctl list_queues` sees it; `leader` and `members` are node names
    (empty for a classic queue)."""

    name: str
    type: str
    leader: str
    members: tuple[str, ...]


@dataclass
class RabbitCluster:
    """Three (or `size`) RabbitMQ nodes clustered on loopback. Start one with
    `RabbitCluster.launch`; `destroy()` kills them all and removes their folder.

    The controls are coroutines, safe to call while a load runs in the same event loop; each
    records how long it took in `timings`."""

    folder: Path
    nodes: tuple[RabbitNode, ...]
    user: str
    password: str
    epmd_port: int
    _run: RunFolder = field(repr=False)
    _servers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)
    _epmd: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # (what, seconds): "form cluster", "kill a@localhost", "start a@localhost", ...
    timings: list[tuple[str, float]] = field(default_factory=list)

    # --- starting and removing ------------------------------------------------------------

    @classmethod
    async def launch(cls, run: RunFolder, size: int = 3) -> RabbitCluster:
        """Start `size` nodes under a new folder of `run` and wait until all are running members
        of one cluster. On failure, everything started is removed again."""
        began = time.monotonic()
        folder, serial = run.subfolder("rabbitmq")
        stem = f"acme{os.getpid()}" + ("" if serial == 1 else f"-{serial}")
        nodes = tuple(
            RabbitNode(
                name=f"{stem}{chr(ord('a') + i)}@localhost",
                amqp_port=free_port(),
                dist_port=free_port(),
                folder=folder / chr(ord("a") + i),
            )
            for i in range(size)
        )
        cluster = cls(
            folder=folder,
            nodes=nodes,
            user=f"acme-test-{os.getpid()}",
            password=secrets.token_hex(16),
            epmd_port=free_port(),
            _run=run,
        )
        try:
            cluster._write_files()
            await cluster._start_epmd()
            # The first node alone: it creates the cluster (and the run's user); the others find
            # it running among their classic_config peers and join it. Booted all at once, each
            # could find no peer running and start a cluster of its own.
            await cluster._boot(nodes[0])
            await asyncio.gather(*(cluster._boot(node) for node in nodes[1:]))
            await cluster.wait_until_clustered()
        except BaseException:
            await cluster.destroy()
            raise
        cluster._took("form cluster", began)
        return cluster

    async def destroy(self) -> None:
        """Kill every node and the epmd (their data goes with them, so no polite stop), then
        remove the cluster's folder."""
        for process in [*self._servers.values(), self._epmd]:
            if process is not None and process.poll() is None:
                # Each was started in a session of its own: the group is the script, its
                # beam.smp and their helpers (erl_child_setup, inet_gethost).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        for process in [*self._servers.values(), self._epmd]:
            if process is not None:
                await asyncio.to_thread(process.wait, 10)
        self._servers.clear()
        await asyncio.to_thread(kill_processes_of, self.folder)
        await asyncio.to_thread(shutil.rmtree, self.folder, True)

    # --- addresses ------------------------------------------------------------------------

    def url(self, node: RabbitNode, vhost: str = "/") -> str:
        """The AMQP URL of one node, for the cluster's user, on `vhost`."""
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{node.amqp_port}/" + quote(
            vhost, safe=""
        )

    def urls(self, vhost: str = "/") -> list[str]:
        """The AMQP URL of every node, in node order."""
        return [self.url(node, vhost) for node in self.nodes]

    def url_list(self, vhost: str = "/") -> str:
        """Every node's URL, comma-separated: the RABBITMQ_URL of a service that may fail over."""
        return ",".join(self.urls(vhost))

    def node(self, name: str) -> RabbitNode:
        """The node of this Erlang name (`acme123a@localhost`)."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} in {[n.name for n in self.nodes]}")

    def running(self) -> list[RabbitNode]:
        """The nodes this cluster started and has not killed or stopped since."""
        return [n for n in self.nodes if self._alive(n)]

    # --- rabbitmqctl ------------------------------------------------------------------------

    async def rabbitmqctl(
        self, *args: str, node: RabbitNode | None = None, within: float = 60.0
    ) -> str:
        """Run `rabbitmqctl -q -n NODE ARGS` with the cluster's cookie and epmd and return its
        output; NODE is the first running node unless given. Fails on a non-zero exit."""
        target = node or self._any_running()
        return await run_checked(
            str(CTL), "-q", "-n", target.name, *args, env=self._environ(), within=within
        )

    async def add_vhost(self, name: str) -> None:
        """Create a vhost and give the cluster's user every permission on it."""
        await self.rabbitmqctl("add_vhost", name)
        await self.rabbitmqctl("set_permissions", "-p", name, self.user, ".*", ".*", ".*")

    async def delete_vhost(self, name: str) -> None:
        await self.rabbitmqctl("delete_vhost", name)

    async def running_nodes(self, node: RabbitNode | None = None) -> list[str]:
        """The running members of the cluster, as `node` (default: any running one) sees them."""
        status = json.loads(
            await self.rabbitmqctl("cluster_status", "--formatter", "json", node=node)
        )
        return sorted(status["running_nodes"])

    async def queues(self, vhost: str) -> list[QueueInfo]:
        """Every queue of `vhost` with its type, leader and members. A quorum queue whose leader
        was just lost is listed only among the `--offline` ones, without leader or members."""
        columns = ["name", "type", "leader", "members", "--formatter", "json"]
        rows = json.loads(await self.rabbitmqctl("list_queues", "-p", vhost, *columns))
        queues = {
            row["name"]: QueueInfo(
                name=row["name"],
                type=row["type"],
                leader=row.get("leader") or "",
                members=tuple(row.get("members") or ()),
            )
            for row in rows
        }
        offline = json.loads(
            await self.rabbitmqctl(
                "list_queues", "-p", vhost, "--offline", "name", "type", "--formatter", "json"
            )
        )
        for row in offline:
            queues.setdefault(row["name"], QueueInfo(row["name"], row["type"], "", ()))
        return sorted(queues.values(), key=lambda q: q.name)

    async def leader_of_most_queues(self, vhost: str) -> RabbitNode:
        """The node that leads the most quorum queues of `vhost` (the first in node order on a
        tie)."""
        leaders = Counter(q.leader for q in await self.queues(vhost) if q.type == "quorum")
        if not leaders:
            raise AssertionError(f"no quorum queue in vhost {vhost!r}")
        most = max(leaders.values())
        return next(n for n in self.nodes if leaders.get(n.name) == most)

    async def wait_for_leaders(self, vhost: str, deadline: float = 30.0) -> list[QueueInfo]:
        """Until every quorum queue of `vhost` has a leader on a running node (after a node was
        killed or stopped, Raft elects new ones within seconds); returns the queues."""
        running = {n.name for n in self.running()}

        async def led() -> list[QueueInfo] | None:
            queues = [q for q in await self.queues(vhost) if q.type == "quorum"]
            return queues if all(q.leader in running for q in queues) else None

        return await wait_until(led, deadline=deadline, what=f"quorum leaders in {vhost}")

    # --- faults ---------------------------------------------------------------------------

    async def kill(self, node: RabbitNode) -> None:
        """SIGKILL the node's beam.smp (found by its pid file, checked against /proc), and wait
        until it is gone."""
        began = time.monotonic()
        pid = self._beam_pid(node)
        os.kill(pid, signal.SIGKILL)
        await self._wait_exited(node)
        self._took(f"kill {node.name}", began)

    async def stop(self, node: RabbitNode) -> None:
        """Stop the node gracefully (`rabbitmqctl stop`: it hands its queue leaderships over and
        leaves the cluster's running members) and wait until its process has exited."""
        began = time.monotonic()
        await self.rabbitmqctl("stop", node=node, within=BOOT_DEADLINE)
        await self._wait_exited(node)
        self._took(f"stop {node.name}", began)

    async def start(self, node: RabbitNode) -> None:
        """Start a node that was killed or stopped, on its own data directory, and wait until it
        is running and every started node sees it back in the cluster."""
        began = time.monotonic()
        if self._alive(node):
            raise AssertionError(f"{node.name} is already running")
        await self._boot(node)
        await self.wait_until_clustered()
        self._took(f"start {node.name}", began)

    async def heal(self) -> None:
        """Start every node that is down, so a test finds the whole cluster running."""
        for node in self.nodes:
            if not self._alive(node):
                await self.start(node)

    async def wait_until_clustered(self, deadline: float = 60.0) -> list[str]:
        """Until each running node counts exactly the running nodes as the cluster's running
        members (a node just killed can linger in the others' view for a few seconds)."""
        expected = sorted(n.name for n in self.running())

        async def agreed() -> list[str] | None:
            views = await asyncio.gather(*(self.running_nodes(n) for n in self.running()))
            return expected if all(view == expected for view in views) else None

        return await wait_until(agreed, deadline=deadline, what=f"cluster of {expected}")

    # --- internals ------------------------------------------------------------------------

    @property
    def _home(self) -> Path:
        return self.folder / "home"

    def _environ(self, node: RabbitNode | None = None) -> dict[str, str]:
        """A clean environment: nothing of the test's own RABBITMQ_* or ERL_* settings."""
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            # The Erlang cookie is read from $HOME/.erlang.cookie, by the nodes and the CLI.
            "HOME": str(self._home),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONF_ENV_FILE": str(self.folder / "rabbitmq-env.conf"),
            # The CLI's own distribution listener: any free port, loopback only (the default
            # range, 35672-35682, is shared with every other rabbitmqctl on the machine).
            "RABBITMQ_CTL_DIST_PORT_MIN": "0",
            "RABBITMQ_CTL_DIST_PORT_MAX": "0",
            "RABBITMQ_CTL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            **self._run.environ(self.folder),
        }
        if node is not None:
            env.update(
                RABBITMQ_NODENAME=node.name,
                RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                RABBITMQ_NODE_PORT=str(node.amqp_port),
                RABBITMQ_DIST_PORT=str(node.dist_port),
                RABBITMQ_MNESIA_BASE=str(node.folder / "mnesia"),
                RABBITMQ_LOG_BASE=str(node.folder / "log"),
                RABBITMQ_CONFIG_FILE=str(node.folder / "rabbitmq.conf"),
                RABBITMQ_ADVANCED_CONFIG_FILE=str(node.folder / "advanced.config"),
                RABBITMQ_ENABLED_PLUGINS_FILE=str(self.folder / "enabled_plugins"),
                RABBITMQ_PID_FILE=str(node.pid_file),
                RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            )
        return env

    def _write_files(self) -> None:
        self._home.mkdir(mode=0o700)
        cookie = self._home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
        (self.folder / "rabbitmq-env.conf").write_text("")
        (self.folder / "enabled_plugins").write_text("[].\n")
        peers = "".join(
            f"cluster_formation.classic_config.nodes.{i} = {n.name}\n"
            for i, n in enumerate(self.nodes, 1)
        )
        for node in self.nodes:
            node.folder.mkdir(mode=0o700)
            (node.folder / "advanced.config").write_text("[].\n")
            (node.folder / "rabbitmq.conf").write_text(
                f"listeners.tcp.1 = 127.0.0.1:{node.amqp_port}\n"
                # Created by the first node at its first boot, in place of guest/guest.
                f"default_user = {self.user}\n"
                f"default_pass = {self.password}\n"
                "default_user_tags.administrator = true\n"
                "cluster_formation.peer_discovery_backend = classic_config\n"
                f"{peers}"
                "log.console = false\n"
                "log.file.level = info\n"
            )

    def _spawn(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        """A server process in a session of its own (so that destroy() can kill its whole
        process group), its output appended to `log`."""
        with log.open("ab") as out:
            return subprocess.Popen(
                args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def _start_epmd(self) -> None:
        epmd = shutil.which("epmd") or "/usr/bin/epmd"
        self._epmd = self._spawn(
            [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            self._environ(),
            self.folder / "epmd.log",
        )
        await wait_until(
            lambda: _listening(self.epmd_port, self._epmd), deadline=10, what="our epmd"
        )

    async def _boot(self, node: RabbitNode) -> None:
        process = self._spawn([str(SERVER)], self._environ(node), node.console_file)
        self._servers[node.name] = process
        try:
            # The AMQP listener opens at the end of the boot; await_startup then confirms it.
            await wait_until(
                lambda: _listening(node.amqp_port, process, node.console_file),
                deadline=BOOT_DEADLINE,
                interval=0.1,
                what=f"{node.name} to listen on {node.amqp_port}",
            )
            await self.rabbitmqctl("await_startup", "--timeout", "60", node=node)
        except BaseException:
            logger.error("%s did not boot; its log:\n%s", node.name, _tail(node.log_file))
            raise

    def _alive(self, node: RabbitNode) -> bool:
        process = self._servers.get(node.name)
        return process is not None and process.poll() is None

    def _any_running(self) -> RabbitNode:
        for node in self.nodes:
            if self._alive(node):
                return node
        raise AssertionError("no node of the cluster is running")

    def _beam_pid(self, node: RabbitNode) -> int:
        """The pid in the node's pid file, after checking /proc that it is that node's beam.smp
        (a stale pid file must never make us kill a stranger)."""
        pid = int(node.pid_file.read_text().strip())
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            raise AssertionError(f"{node.name}: no process {pid} (from {node.pid_file})") from None
        if not argv0.endswith(b"beam.smp") or f"RABBITMQ_NODENAME={node.name}".encode() not in (
            environ
        ):
            raise AssertionError(f"process {pid} of {node.pid_file} is not {node.name}'s beam.smp")
        return pid

    async def _wait_exited(self, node: RabbitNode) -> None:
        process = self._servers[node.name]
        try:
            await asyncio.to_thread(process.wait, BOOT_DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{node.name} still running {BOOT_DEADLINE}s later") from None

    def _took(self, what: str, began: float) -> None:
        seconds = time.monotonic() - began
        self.timings.append((what, seconds))
        logger.info("rabbitmq cluster: %s took %.1fs", what, seconds)


async def _listening(
    port: int, process: subprocess.Popen[bytes] | None, log: Path | None = None
) -> bool:
    if process is not None and process.poll() is not None:
        raise AssertionError(
            f"exited with {process.returncode} before listening on {port}"
            + (f":\n{_tail(log)}" if log else "")
        )
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


def _tail(path: Path | None, chars: int = 3000) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return path.read_text(errors="replace")[-chars:]
