"""The README's two commands on a bare Debian 12: scripts/check_bare_machine.sh builds one with
debootstrap (python3 and git, nothing else), runs it in namespaces of its own, where this machine's
PostgreSQL and RabbitMQ are out of reach, clones the committed HEAD into it, and there runs
./scripts/run.sh until the happy-path order is paid, then ./scripts/test.sh.

Slow (minutes: see the README); needs root and apt-get. TEST_BARE_MACHINE=0 skips it: the check
sets that inside the machine, so that it does not run itself there again."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import OUTPUT_DIR

pytestmark = pytest.mark.bare_machine

CHECK = Path(__file__).resolve().parents[2] / "scripts" / "check_bare_machine.sh"
# The check's own deadline; it then cleans up, which takes seconds (two minutes at most).
DEADLINE = 3000
SKIPPED = 77


def test_run_sh_and_test_sh_set_up_a_bare_debian_machine() -> None:
    if os.environ.get("TEST_BARE_MACHINE") == "0":
        pytest.skip("TEST_BARE_MACHINE=0")
    if os.geteuid() != 0:
        pytest.skip("the bare-machine check needs root (debootstrap, namespaces, iptables)")
    if shutil.which("apt-get") is None:
        pytest.skip("the bare-machine check needs apt-get (a Debian or Ubuntu host)")

    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    log_path = OUTPUT_DIR / "bare-machine.log"
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            ["bash", str(CHECK)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ | {"BARE_CHECK_DEADLINE": str(DEADLINE)},
        )
        try:
            status = process.wait(timeout=DEADLINE + 180)
        except subprocess.TimeoutExpired:
            # SIGTERM lets it clean up: the namespace, the rules, ip_forward, the root filesystem.
            process.terminate()
            try:
                status = process.wait(timeout=150)
            except subprocess.TimeoutExpired:
                process.kill()
                status = process.wait()
    output = log_path.read_text(encoding="utf-8", errors="replace")
    if status == SKIPPED:
        pytest.skip(output.strip().splitlines()[-1])
    tail = "\n".join(output.splitlines()[-200:])
    assert status == 0, f"the bare-machine check failed ({status}); its log: {log_path}\n{tail}"
