"""scripts/audit_dependencies.py, the dependency audit of scripts/test.sh, and
scripts/refresh_advisories.py, which makes its snapshot: what it audits, that it fails on a known
vulnerability with a fix and on a dependency it could audit neither way, and only then. The
service's verdict is tested on pip-audit reports of the shape pip-audit writes (`--format json`),
the snapshot's on snapshots made here (from a git repository shaped like pypa/advisory-database),
so neither a vulnerability service nor the real database is needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from audit_dependencies import DEFAULT_SNAPSHOT

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "audit_dependencies.py"
REFRESH = ROOT / "scripts" / "refresh_advisories.py"

# Shaped as jinja2's PYSEC-2021-66 (CVE-2020-28493): every release before 2.11.3.
JINJA2_BEFORE_2_11_3 = {
    "id": "PYSEC-2021-66",
    "aliases": ["CVE-2020-28493"],
    "affected": [
        {
            "package": {"ecosystem": "PyPI", "name": "jinja2"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2.11.3"}]}],
        }
    ],
}


def run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(path: Path, content: Any) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def snapshot(
    packages: list[str], advisories: dict[str, list[Any]] | None = None, age_days: int = 3
) -> dict[str, Any]:
    date = datetime.now(UTC) - timedelta(days=age_days)
    return {
        "source": "pypa/advisory-database",
        "commit": "0" * 40,
        "date": date.isoformat(),
        "packages": packages,
        "advisories": advisories or {},
    }


def audited(tmp_path: Path, installed: str, snap: dict[str, Any] | None, *args: str) -> Any:
    """The audit of these name==version lines, offline unless a --report is among `args`."""
    snapshot_path = tmp_path / "snapshot.json"
    if snap is not None:
        write(snapshot_path, snap)
    offline = () if "--report" in args else ("--offline",)
    return run(
        SCRIPT,
        "--installed",
        str(write(tmp_path / "installed.txt", installed)),
        "--snapshot",
        str(snapshot_path),
        *offline,
        *args,
    )


def report(tmp_path: Path, dependencies: list[dict[str, Any]]) -> str:
    return str(write(tmp_path / "report.json", {"dependencies": dependencies}))


def clean(name: str, version: str) -> dict[str, Any]:
    return {"name": name, "version": version, "vulns": []}


def test_it_audits_the_runtime_dependencies_as_installed_and_not_the_dev_tools() -> None:
    listed = run(SCRIPT, "--requirements")

    assert listed.returncode == 0, listed.stderr
    pins = dict(line.split("==") for line in listed.stdout.splitlines())
    assert pins["fastapi"] == "0.165.0"  # a pin of pyproject.toml
    assert "starlette" in pins  # pulled in by fastapi
    assert "httptools" in pins  # by uvicorn[standard]: extras asked for are followed
    for dev_tool in ("pytest", "ruff", "mypy", "hypothesis", "schemathesis", "pip-audit"):
        assert dev_tool not in pins


def test_a_known_vulnerability_with_a_fix_reported_by_the_service_fails_the_build(
    tmp_path: Path,
) -> None:
    dependencies = [
        clean("fastapi", "0.165.0"),
        {
            "name": "starlette",
            "version": "1.10.0",
            "vulns": [{"id": "GHSA-xxxx-yyyy-zzzz", "fix_versions": ["1.10.1"]}],
        },
    ]

    result = audited(
        tmp_path,
        "fastapi==0.165.0\nstarlette==1.10.0\n",
        None,
        "--report",
        report(tmp_path, dependencies),
    )

    assert result.returncode == 1
    assert "VULNERABLE  starlette 1.10.0: GHSA-xxxx-yyyy-zzzz, fixed in 1.10.1" in result.stdout
    assert "bump the pins" in result.stdout


def test_a_vulnerability_with_no_fix_is_reported_but_does_not_fail(tmp_path: Path) -> None:
    dependencies = [
        {
            "name": "orjson",
            "version": "3.13.0",
            "vulns": [{"id": "PYSEC-2099-1", "fix_versions": []}],
        }
    ]

    result = audited(tmp_path, "orjson==3.13.0\n", None, "--report", report(tmp_path, dependencies))

    assert result.returncode == 0, result.stdout
    assert "orjson 3.13.0: PYSEC-2099-1, no fix released yet" in result.stdout


def test_what_the_service_audited_needs_no_snapshot(tmp_path: Path) -> None:
    dependencies = [clean("fastapi", "0.165.0"), clean("asyncpg", "0.32.0")]

    result = audited(
        tmp_path,
        "fastapi==0.165.0\nasyncpg==0.32.0\n",
        None,
        "--report",
        report(tmp_path, dependencies),
    )

    assert result.returncode == 0, result.stdout
    assert "audited 2 of 2 dependencies: 2 by the vulnerability service, 0 by" in result.stdout
    assert "no known vulnerability with a fix" in result.stdout


def test_what_the_service_could_not_look_up_is_audited_with_the_snapshot(tmp_path: Path) -> None:
    dependencies = [
        clean("fastapi", "0.165.0"),
        {"name": "jinja2", "skip_reason": "Dependency not found on PyPI"},
    ]

    result = audited(
        tmp_path,
        "fastapi==0.165.0\njinja2==2.10\n",
        snapshot(["fastapi", "jinja2"], {"jinja2": [JINJA2_BEFORE_2_11_3]}),
        "--report",
        report(tmp_path, dependencies),
    )

    assert result.returncode == 1
    assert "VULNERABLE  jinja2 2.10: PYSEC-2021-66, fixed in 2.11.3" in result.stdout
    assert "1 by the vulnerability service, 1 by the advisory snapshot" in result.stdout


def test_a_dependency_audited_neither_way_fails_the_build(tmp_path: Path) -> None:
    # The service answered for fastapi, not for asyncpg, and there is no snapshot to fall back on.
    dependencies = [
        clean("fastapi", "0.165.0"),
        {"name": "asyncpg", "skip_reason": "Dependency not found on PyPI"},
    ]

    result = audited(
        tmp_path,
        "fastapi==0.165.0\nasyncpg==0.32.0\n",
        None,
        "--report",
        report(tmp_path, dependencies),
    )

    assert result.returncode == 1
    assert "FAILED: 1 of 2 dependencies could be audited neither" in result.stdout
    assert "asyncpg 0.32.0: service: Dependency not found on PyPI; snapshot: no advisory" in (
        result.stdout
    )


def test_with_no_source_of_advisories_at_all_it_says_not_audited_and_exits_3(
    tmp_path: Path,
) -> None:
    # As on CI's network: the service answers for nothing, and no snapshot file is there.
    dependencies = [{"name": "asyncpg", "skip_reason": "Dependency not found on PyPI"}]

    result = audited(
        tmp_path, "asyncpg==0.32.0\n", None, "--report", report(tmp_path, dependencies)
    )

    assert result.returncode == 3
    assert "NOT AUDITED" in result.stdout
    assert "!" * 100 in result.stdout
    assert "no known vulnerability" not in result.stdout


def test_a_snapshot_that_lacks_a_package_fails_even_when_the_service_answered_for_none(
    tmp_path: Path,
) -> None:
    dependencies = [{"name": "asyncpg", "skip_reason": "Dependency not found on PyPI"}]

    result = audited(
        tmp_path,
        "asyncpg==0.32.0\n",
        snapshot(["fastapi"]),
        "--report",
        report(tmp_path, dependencies),
    )

    assert result.returncode == 1
    assert "NOT AUDITED" not in result.stdout


def test_a_planted_vulnerable_version_fails_the_offline_audit(tmp_path: Path) -> None:
    result = audited(
        tmp_path,
        "fastapi==0.165.0\njinja2==2.10\n",
        snapshot(["fastapi", "jinja2"], {"jinja2": [JINJA2_BEFORE_2_11_3]}),
    )

    assert result.returncode == 1
    assert "VULNERABLE  jinja2 2.10: PYSEC-2021-66, fixed in 2.11.3" in result.stdout
    assert "audited 2 of 2 dependencies: 0 by the vulnerability service, 2 by" in result.stdout


def test_the_fixed_release_passes_and_a_package_without_records_is_audited(tmp_path: Path) -> None:
    result = audited(
        tmp_path,
        "fastapi==0.165.0\njinja2==3.1.6\n",
        snapshot(["fastapi", "jinja2"], {"jinja2": [JINJA2_BEFORE_2_11_3]}),
    )

    assert result.returncode == 0, result.stdout
    assert "audited 2 of 2 dependencies" in result.stdout
    assert "WARNING" not in result.stdout


def test_a_package_the_snapshot_was_not_made_for_is_not_audited(tmp_path: Path) -> None:
    result = audited(tmp_path, "fastapi==0.165.0\nnewcomer==1.0\n", snapshot(["fastapi"]))

    assert result.returncode == 1
    assert "newcomer 1.0: snapshot: the advisory snapshot was not made for it" in result.stdout


def test_a_record_the_snapshot_cannot_judge_leaves_its_package_not_audited(
    tmp_path: Path,
) -> None:
    commits_only = {
        "id": "PYSEC-2099-2",
        "affected": [
            {
                "package": {"ecosystem": "PyPI", "name": "fastapi"},
                "ranges": [{"type": "GIT", "events": [{"introduced": "0"}, {"fixed": "abc"}]}],
            }
        ],
    }

    result = audited(
        tmp_path, "fastapi==0.165.0\n", snapshot(["fastapi"], {"fastapi": [commits_only]})
    )

    assert result.returncode == 1
    assert "fastapi 0.165.0: snapshot: the advisory snapshot cannot judge 0.165.0" in result.stdout


def test_a_snapshot_older_than_90_days_is_reported_loudly(tmp_path: Path) -> None:
    result = audited(tmp_path, "fastapi==0.165.0\n", snapshot(["fastapi"], age_days=91))

    assert result.returncode == 0, result.stdout
    assert "WARNING: the advisory snapshot is 91 days old" in result.stdout
    assert "!" * 100 in result.stdout


def test_a_broken_snapshot_is_named_and_nothing_passes_for_audited(tmp_path: Path) -> None:
    result = audited(tmp_path, "fastapi==0.165.0\n", {"date": "yesterday"})

    assert result.returncode == 1
    assert "is not an advisory snapshot" in result.stdout


def git(repo: Path, *args: str, date: str | None = None) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    if date:
        env.update(GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date)
    subprocess.run(
        ["git", "-C", str(repo), *args], env=env, check=True, capture_output=True, timeout=30
    )


def test_refresh_takes_the_records_of_the_runtime_dependencies_and_the_mirrors_date(
    tmp_path: Path,
) -> None:
    mirror = tmp_path / "advisory-database"
    (mirror / "vulns" / "jinja2").mkdir(parents=True)
    (mirror / "vulns" / "django").mkdir()
    write(
        mirror / "vulns" / "jinja2" / "PYSEC-2021-66.yaml",
        "id: PYSEC-2021-66\naliases:\n- CVE-2020-28493\ndetails: A ReDoS in urlize.\n"
        "modified: 2021-02-08T00:00:00Z\naffected:\n- package:\n    name: jinja2\n"
        "    ecosystem: PyPI\n  ranges:\n  - type: ECOSYSTEM\n    events:\n"
        "    - introduced: '0'\n    - fixed: 2.11.3\n  versions:\n  - '2.10'\n",
    )
    write(mirror / "vulns" / "django" / "PYSEC-2099-3.yaml", "id: PYSEC-2099-3\naffected: []\n")
    git(mirror, "init", "-q")
    git(mirror, "add", ".")
    git(mirror, "commit", "-q", "-m", "records", date="2026-11-20T10:00:00+00:00")
    output = tmp_path / "shared" / "advisories.json"

    made = run(REFRESH, str(mirror / ".git"), "--output", str(output))

    assert made.returncode == 0, made.stderr
    snap = json.loads(output.read_text(encoding="utf-8"))
    assert snap["date"] == "2026-11-20T10:00:00+00:00"
    assert {"fastapi", "jinja2", "starlette"} <= set(snap["packages"])  # the runtime closure
    assert "django" not in snap["packages"]
    assert list(snap["advisories"]) == ["jinja2"]
    (kept,) = snap["advisories"]["jinja2"]
    assert kept["id"] == "PYSEC-2021-66"
    assert "details" not in kept  # the prose is not needed to judge a version
    # And the audit judges with it: the planted version fails, the pinned one passes.
    planted = write(tmp_path / "planted.txt", "jinja2==2.10\n")
    vulnerable = run(SCRIPT, "--offline", "--snapshot", str(output), "--installed", str(planted))
    assert vulnerable.returncode == 1
    assert "VULNERABLE  jinja2 2.10: PYSEC-2021-66, fixed in 2.11.3" in vulnerable.stdout
    pinned = run(SCRIPT, "--offline", "--snapshot", str(output))
    assert pinned.returncode == 0, pinned.stdout


def test_refresh_says_what_is_wrong_with_a_path_that_is_no_mirror(tmp_path: Path) -> None:
    made = run(REFRESH, str(tmp_path / "nothing"), "--output", str(tmp_path / "out.json"))

    assert made.returncode == 1
    assert "not a git directory of pypa/advisory-database" in made.stderr


@pytest.mark.skipif(
    not DEFAULT_SNAPSHOT.exists(), reason=f"no advisory snapshot at {DEFAULT_SNAPSHOT}"
)
def test_the_shared_snapshot_knows_old_urllib3_and_jinja2_as_vulnerable(tmp_path: Path) -> None:
    planted = write(tmp_path / "planted.txt", "urllib3==1.26.0\njinja2==2.10\n")

    result = run(SCRIPT, "--offline", "--installed", str(planted))

    assert result.returncode == 1
    assert "VULNERABLE  urllib3 1.26.0: PYSEC-2023-212, fixed in 1.26.18, 2.0.7" in result.stdout
    assert "VULNERABLE  jinja2 2.10: PYSEC-2021-66, fixed in 2.11.3" in result.stdout
