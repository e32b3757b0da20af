"""Real service processes for end-to-end tests: start, stop, kill, read their logs."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from acme_orders.core.runtime import pid_alive
from tests.support.waiting import wait_until

OUTPUT_ROOT = Path(
    os.environ.get("TEST_OUTPUT_DIR", Path(__file__).resolve().parents[2] / "test-output")
)
# Each run keeps its services' logs in a folder of its own, named after its pid.
OUTPUT_DIR = OUTPUT_ROOT / f"run-{os.getpid()}"


def clear_output() -> None:
    """Remove the log folders of runs that are over."""
    for folder in OUTPUT_ROOT.glob("run-*"):
        pid = folder.name.removeprefix("run-")
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


# The `acme-orders` command of the environment the tests run in.
ACME_ORDERS = Path(sys.executable).parent / "acme-orders"


async def acme_orders(env: dict[str, str] | None, *args: str) -> subprocess.CompletedProcess[str]:
    """`acme-orders ARGS...` with this environment (None: the tests' own), run to its end (at most
    a minute), its output captured. In a thread: the event loop stays free meanwhile for the
    fixtures' connections (and the tests' TCP proxies)."""
    return await asyncio.to_thread(
        subprocess.run,
        [str(ACME_ORDERS), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def run_checked(
    *args: str,
    env: dict[str, str],
    within: float,
    as_user: str | None = None,
    cwd: Path | None = None,
) -> str:
    """Run a program to its end (as the OS user AS_USER when given) and return what it wrote on
    stdout; fail the test, with both streams, when it exits non-zero or takes over WITHIN
    seconds."""
    account = pwd.getpwnam(as_user) if as_user else None
    process = await asyncio.create_subprocess_exec(
        *args,
        user=account.pw_uid if account else None,
        group=account.pw_gid if account else None,
        extra_groups=[] if account else None,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{' '.join(args)} took over {within}s") from None
    if process.returncode != 0:
        both = (out + err).decode(errors="replace").strip()
        raise AssertionError(f"{' '.join(args)} exited {process.returncode}: {both}")
    return out.decode(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServiceProcess:
    """One `acme-orders run SERVICE` process, its output in a log file under test-output/."""

    def __init__(self, args: list[str], env: dict[str, str], log_name: str) -> None:
        self.args = args
        self.env = env
        OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = OUTPUT_DIR / f"{log_name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def service(cls, name: str, env: dict[str, str], log_name: str | None = None) -> ServiceProcess:
        return cls([sys.executable, "-m", "acme_orders", "run", name], env, log_name or name)

    def start(self) -> ServiceProcess:
        """Start the process; its output is appended, so a restarted service keeps one log."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_for_log(self, text: str, deadline: float = 20.0) -> None:
        async def seen() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"{self.args} exited with {self.process.returncode} before logging {text!r}:\n"
                    + self.log()[-3000:]
                )
            return text in self.log()

        await wait_until(seen, deadline=deadline, what=f"{text!r} in {self.log_path.name}")

    async def stop(self, within: float = 20.0) -> int:
        """SIGTERM, and the exit code once it has stopped. One that does not stop in time is
        killed, so no test leaves a process behind, and the test fails.

        Awaited, not blocking: the event loop may be running what the process needs in order to
        stop (the tests' TCP proxies)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.process.wait, within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"{self.log_path.name}: still running {within}s after SIGTERM; killed"
            ) from None

    def kill(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


async def stop_all(processes: list[ServiceProcess]) -> None:
    """Stop every process at once, even when some fail to stop; then report the failures."""
    results = await asyncio.gather(*(p.stop() for p in processes), return_exceptions=True)
    failures = [str(r) for r in results if isinstance(r, BaseException)]
    assert not failures, "; ".join(failures)
