"""The folder a test run keeps its own servers in, and the processes that belong to it.

Everything the cluster fixtures start lives under `/var/tmp/acme-cluster-<pid>/` (the pid of the
pytest process): data directories, logs, configuration, pid files, sockets. Every process they
start carries that path in its environment (`ACME_CLUSTER_RUN`), and most in their command line
too, so the processes of a run can be found in /proc without trusting a pid file: a run that
crashed is swept at the start of the next one (its pid gone: kill what is left of it, remove the
folder), and a run that ends removes its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from acme_orders.core.runtime import pid_alive

logger = logging.getLogger(__name__)

# /var/tmp and not /tmp: a tmpfs /tmp would hold the servers' data in memory, and some machines
# clear /tmp at boot while a folder of a crashed run waits there for the next run's sweep. The
# folder is named after our pid and made by us, so there is no name for another user to squat.
ROOT = Path(os.environ.get("TEST_CLUSTER_ROOT", "/var/tmp"))  # noqa: S108
PREFIX = "acme-cluster-"
# Set in the environment of every process a run starts; children inherit it.
MARKER = "ACME_CLUSTER_RUN"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # gone meanwhile, or not ours to read
        return b""


def _parent_of(pid: int) -> int | None:
    stat = _read(Path(f"/proc/{pid}/stat"))
    if not stat:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` right now."""
    return [p for p in _all_pids() if _parent_of(p) == pid]


def any_alive(pids: list[int]) -> bool:
    """Whether any of `pids` still runs. A zombie does not: an orphan that has exited waits for
    init to reap it, which here can take a second or two."""
    for pid in pids:
        stat = _read(Path(f"/proc/{pid}/stat"))
        if stat and stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z":
            return True
    return False


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


# The programs the fixtures run; a process whose command line names a run folder is only taken
# for one of that run's when it is one of these (not, say, someone's `tail` of a log there).
PROGRAMS = frozenset({"beam.smp", "epmd", "erl", "postgres", "pg_ctl", "rabbitmqctl"})


def _belongs(pid: int, folder: bytes) -> bool:
    environ = _read(Path(f"/proc/{pid}/environ")).split(b"\0")
    marker = f"{MARKER}=".encode() + folder
    if any(entry == marker or entry.startswith(marker + b"/") for entry in environ):
        return True
    argv = _read(Path(f"/proc/{pid}/cmdline")).split(b"\0")
    return (
        bool(argv)
        and os.path.basename(argv[0]).decode(errors="replace") in PROGRAMS
        and any(folder + b"/" in arg for arg in argv)
    )


def processes_of(folder: Path) -> list[int]:
    """Every live process that belongs to `folder` or a folder inside it: its environment carries
    the marker, or its command line names the folder (for one of PROGRAMS), or it descends from
    one that does (PostgreSQL's backends rewrite both for their ps titles, but stay children of
    their postmaster)."""
    me = os.getpid()
    # A zombie is dead already: nothing to kill, and a kill would not make it go.
    pids = [pid for pid in _all_pids() if any_alive([pid])]
    found = {pid for pid in pids if pid != me and _belongs(pid, str(folder).encode())}
    parents = {pid: _parent_of(pid) for pid in pids}
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found and pid not in found}
        found |= more
        grew = bool(more)
    found.discard(me)
    return sorted(found)


def kill_processes_of(folder: Path, deadline: float = 20.0) -> list[int]:
    """SIGKILL every process of `folder` until none is left; returns the pids it killed."""
    killed: list[int] = []
    give_up = time.monotonic() + deadline
    while pids := processes_of(folder):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            if pid not in killed:
                killed.append(pid)
        if time.monotonic() > give_up:
            raise RuntimeError(f"processes of {folder} still alive after SIGKILL: {pids}")
        # A killed process stays in /proc until its parent reaps it; ours are reaped by their
        # Popen, the others by init.
        time.sleep(0.05)
    return killed


def sweep_abandoned_runs(root: Path = ROOT) -> list[Path]:
    """Kill the processes of, and remove, every run folder whose pytest process is gone."""
    swept = []
    for folder in sorted(root.glob(f"{PREFIX}*")):
        pid = folder.name.removeprefix(PREFIX)
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        killed = kill_processes_of(folder)
        shutil.rmtree(folder, ignore_errors=True)
        logger.warning("swept %s of a crashed run (killed %s)", folder, killed or "nothing")
        swept.append(folder)
    return swept


@dataclass
class RunFolder:
    """This run's folder; `subfolder()` gives each cluster a folder of its own inside it."""

    path: Path
    _made: Counter[str] = field(default_factory=Counter, repr=False)

    @classmethod
    def create(cls, root: Path = ROOT) -> RunFolder:
        """Sweep crashed runs, then make this run's folder (readable by the postgres user, which
        runs the PostgreSQL servers, and by nobody else's writes)."""
        sweep_abandoned_runs(root)
        path = root / f"{PREFIX}{os.getpid()}"
        path.mkdir(mode=0o755, exist_ok=True)
        return cls(path)

    def subfolder(self, kind: str) -> tuple[Path, int]:
        """A new empty folder `<kind>-<n>` and its n: 1 for the run's first of that kind, 2 for
        its second, ..."""
        self._made[kind] += 1
        folder = self.path / f"{kind}-{self._made[kind]}"
        folder.mkdir(mode=0o755)
        return folder, self._made[kind]

    def environ(self, folder: Path) -> dict[str, str]:
        """The marker that makes a process of `folder` findable, for its environment."""
        return {MARKER: str(folder)}

    async def remove(self) -> None:
        """Kill whatever is still running under the folder, then delete it."""
        killed = await asyncio.to_thread(kill_processes_of, self.path)
        if killed:
            logger.info("killed leftover processes of %s: %s", self.path, killed)
        await asyncio.to_thread(shutil.rmtree, self.path, True)
