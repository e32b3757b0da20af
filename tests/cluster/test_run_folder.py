"""The run folder's sweep: what a crashed run left (its pid gone) is killed and removed; the
folders of runs still going are left alone."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.run_folder import MARKER, PREFIX, processes_of, sweep_abandoned_runs

pytestmark = pytest.mark.cluster


def test_a_crashed_runs_processes_and_folder_are_swept_and_a_live_runs_are_not(
    tmp_path: Path,
) -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    crashed = tmp_path / f"{PREFIX}{finished.pid}"
    (crashed / "rabbitmq-1").mkdir(parents=True)
    leftover = subprocess.Popen(
        ["sleep", "300"], env={"PATH": os.environ["PATH"], MARKER: str(crashed / "rabbitmq-1")}
    )
    live = tmp_path / f"{PREFIX}{os.getppid()}"
    live.mkdir()
    try:
        assert processes_of(crashed) == [leftover.pid]

        assert sweep_abandoned_runs(tmp_path) == [crashed]

        assert leftover.wait(timeout=10) == -9
        assert not crashed.exists()
        assert live.exists()
    finally:
        leftover.kill()
        leftover.wait()
