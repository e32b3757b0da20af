"""scripts/audit_dependencies.py, the dependency audit of scripts/test.sh: what it audits, and
that it fails on a known vulnerability with a fix, and only then. Its verdict is tested on pip-audit
reports of the shape pip-audit writes (`--format json`), so no vulnerability service is needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "audit_dependencies.py"


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def judged(report: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report), encoding="utf-8")
    return audit("--report", str(path))


def clean(name: str, version: str) -> dict[str, Any]:
    return {"name": name, "version": version, "vulns": []}


def test_it_audits_the_runtime_dependencies_as_installed_and_not_the_dev_tools() -> None:
    listed = audit("--requirements")

    assert listed.returncode == 0, listed.stderr
    pins = dict(line.split("==") for line in listed.stdout.splitlines())
    assert pins["fastapi"] == "0.165.0"  # a pin of pyproject.toml
    assert "starlette" in pins  # pulled in by fastapi
    assert "httptools" in pins  # by uvicorn[standard]: extras asked for are followed
    for dev_tool in ("pytest", "ruff", "mypy", "hypothesis", "schemathesis", "pip-audit"):
        assert dev_tool not in pins


def test_a_known_vulnerability_with_a_fix_fails_the_build(tmp_path: Path) -> None:
    report = {
        "dependencies": [
            clean("fastapi", "0.165.0"),
            {
                "name": "starlette",
                "version": "1.10.0",
                "vulns": [{"id": "GHSA-xxxx-yyyy-zzzz", "fix_versions": ["1.10.1"]}],
            },
        ]
    }

    result = judged(report, tmp_path)

    assert result.returncode == 1
    assert "VULNERABLE  starlette 1.10.0: GHSA-xxxx-yyyy-zzzz, fixed in 1.10.1" in result.stdout
    assert "bump the pins" in result.stdout


def test_a_vulnerability_with_no_fix_is_reported_but_does_not_fail(tmp_path: Path) -> None:
    report = {
        "dependencies": [
            {
                "name": "orjson",
                "version": "3.13.0",
                "vulns": [{"id": "PYSEC-2099-1", "fix_versions": []}],
            }
        ]
    }

    result = judged(report, tmp_path)

    assert result.returncode == 0
    assert "orjson 3.13.0: PYSEC-2099-1, no fix released yet" in result.stdout


def test_no_vulnerability_passes_and_says_how_many_were_audited(tmp_path: Path) -> None:
    result = judged(
        {"dependencies": [clean("fastapi", "0.165.0"), clean("asyncpg", "0.32.0")]}, tmp_path
    )

    assert result.returncode == 0
    assert "2 dependencies audited: no known vulnerability with a fix" in result.stdout
    assert "NOT audited" not in result.stdout


def test_dependencies_the_service_could_not_look_up_are_reported_as_not_audited(
    tmp_path: Path,
) -> None:
    report = {
        "dependencies": [
            clean("fastapi", "0.165.0"),
            {"name": "asyncpg", "skip_reason": "Dependency not found on PyPI"},
        ]
    }

    result = judged(report, tmp_path)

    assert result.returncode == 0
    assert "1 of 2 dependencies were NOT audited" in result.stdout
