"""The runtime wheel, built from this repository as pip builds it: the package with its schema
and static files, and no benchmark code nor the benchmark's dependencies (./bench is a
distribution of its own)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_runtime_wheel_holds_the_package_and_no_benchmark(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("acme_orders-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [
            line
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line
        ]

    assert "acme_orders/core/consumer.py" in names
    assert "acme_orders/migrations/init.sql" in names
    assert "acme_orders/order_api/static/board.js" in names
    assert not [n for n in names if "bench" in n.split("/")[0] or "benchmark" in n]
    assert not [r for r in requires if "psutil" in r]
