"""Audit the runtime dependencies for known vulnerabilities: online with pip-audit, else against a
dated snapshot of the PyPA advisory database.

What is audited is what the services run with: the dependencies of acme-orders (not its dev
extras) as installed from the pins in pyproject.toml, and everything they pulled in, each at its
installed version. Each is audited by the vulnerability service pip-audit asks (PyPI's) when it
answers for it, else by the advisory snapshot (scripts/refresh_advisories.py makes it). The build
fails (exit 1):

- on a known vulnerability that has a fixed release: bump the pin (or the package that pulls it
  in). One with no fix yet is reported and does not fail the build: there is nothing to bump to.
- when a dependency could be audited neither way. The service could not, if it did not answer,
  or answered that it does not know the package; the snapshot could not, if there is none, if it
  was made before the dependency was (it lists the packages it was made for), or if one of the
  package's records cannot be judged against the installed version (a version that is not PEP
  440, a record that names commits only). A package the snapshot was made for and holds no
  record of has no known advisory as of the snapshot's date: audited.

A snapshot older than MAX_SNAPSHOT_AGE is reported loudly each time it is used: what was
published since is unknown to it.

When there is no source of advisories at all (the service answered for no dependency and there is
no snapshot file), it says NOT AUDITED in a banner and exits EXIT_WITHOUT_SOURCE (3), not 1: that
is a machine without the means to audit, not a finding about a dependency. The snapshot path is
--snapshot, else ADVISORY_SNAPSHOT, else shared/advisories/ beside the repository.

    python scripts/audit_dependencies.py              # pip-audit, then the snapshot for the rest
    python scripts/audit_dependencies.py --offline    # the snapshot alone
    python scripts/audit_dependencies.py --report F   # judge a pip-audit JSON report instead
    python scripts/audit_dependencies.py --installed F    # audit these name==version lines
    python scripts/audit_dependencies.py --requirements   # print what would be audited
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

from advisory_ranges import UndecidableError, finding
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "acme-orders"
ROOT = Path(__file__).resolve().parents[1]
# Where the snapshot is looked for: ADVISORY_SNAPSHOT, else shared/ beside the repository. It is
# never committed here: it is derived from a fetched copy of the database, which stays out of this
# repository's commits.
DEFAULT_SNAPSHOT = Path(
    os.environ.get("ADVISORY_SNAPSHOT")
    or ROOT.parent / "shared" / "advisories" / "pypa-advisory-database.json"
)
# No source of advisories at all (the service answered for nothing, and no snapshot): not a pass
# and not a finding. scripts/test.sh reports it loudly and goes on.
EXIT_WITHOUT_SOURCE = 3
MAX_SNAPSHOT_AGE = timedelta(days=90)
# pip-audit's socket timeout, and how long it may take in all: a service that does not answer
# must not hold the build up, the snapshot is there for that.
SERVICE_TIMEOUT = 10
PIP_AUDIT_TIMEOUT = 120


def runtime_requirements(project: str = PROJECT) -> dict[str, str]:
    """name -> installed version of every package the project needs at run time, transitively,
    with the extras asked for (uvicorn[standard]) and not the project's own (dev)."""
    environment = {k: str(v) for k, v in default_environment().items()}
    found: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    pending: list[tuple[str, frozenset[str]]] = [(project, frozenset())]
    while pending:
        name, extras = pending.pop()
        for raw in metadata.requires(name) or []:
            requirement = Requirement(raw)
            if requirement.marker and not any(
                requirement.marker.evaluate(environment | {"extra": extra})
                for extra in extras | {""}
            ):
                continue
            dependency = canonicalize_name(requirement.name)
            found.setdefault(dependency, metadata.version(dependency))
            for extra in requirement.extras | {""}:
                if (dependency, extra) not in seen:
                    seen.add((dependency, extra))
                    pending.append((dependency, frozenset({extra} - {""})))
    return found


def read_installed(path: Path) -> dict[str, str]:
    """name==version lines (as --requirements prints them); blank lines and # comments aside."""
    installed: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, separator, version = line.partition("==")
        if not separator or not name.strip() or not version.strip():
            raise SystemExit(f"{path}:{number}: {line!r} is not name==version")
        installed[canonicalize_name(name.strip())] = version.strip()
    return installed


@dataclass(frozen=True, slots=True)
class Vulnerability:
    advisory: str
    fixed_in: tuple[str, ...]


@dataclass
class Verdict:
    """What the audit found, dependency by dependency."""

    by_service: dict[str, list[Vulnerability]] = field(default_factory=dict)
    by_snapshot: dict[str, list[Vulnerability]] = field(default_factory=dict)
    # name -> why neither way could audit it
    not_audited: dict[str, str] = field(default_factory=dict)
    # The service audited nothing and there is no snapshot: no source of advisories at all.
    without_source: bool = False

    def vulnerabilities(self) -> list[tuple[str, Vulnerability]]:
        return [
            (name, vulnerability)
            for audited in (self.by_service, self.by_snapshot)
            for name, found in sorted(audited.items())
            for vulnerability in found
        ]


def judge_report(
    report: Mapping[str, Any],
) -> tuple[dict[str, list[Vulnerability]], dict[str, str]]:
    """A pip-audit JSON report: what it audited (name -> vulnerabilities) and what it skipped
    (name -> why)."""
    audited: dict[str, list[Vulnerability]] = {}
    skipped: dict[str, str] = {}
    for dependency in report.get("dependencies", []):
        name = canonicalize_name(str(dependency["name"]))
        if "skip_reason" in dependency:
            skipped[name] = str(dependency["skip_reason"])
            continue
        audited[name] = [
            Vulnerability(str(v["id"]), tuple(str(f) for f in v.get("fix_versions") or []))
            for v in dependency.get("vulns", [])
        ]
    return audited, skipped


def run_pip_audit(requirements: Mapping[str, str]) -> dict[str, Any]:
    """pip-audit's report on exactly these versions; when it cannot run or gives no report,
    every dependency skipped with the reason."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as pinned:
        pinned.write("".join(f"{name}=={version}\n" for name, version in requirements.items()))
    try:
        # --no-deps --disable-pip: audit exactly these versions, with no resolving or installing.
        result = subprocess.run(  # noqa: S603 (our interpreter, fixed arguments)
            [
                sys.executable,
                "-m",
                "pip_audit",
                "--requirement",
                pinned.name,
                "--no-deps",
                "--disable-pip",
                "--format",
                "json",
                "--progress-spinner",
                "off",
                "--timeout",
                str(SERVICE_TIMEOUT),
            ],
            capture_output=True,
            text=True,
            timeout=PIP_AUDIT_TIMEOUT,
            check=False,
        )
        stdout, detail = result.stdout, " ".join(result.stderr.split())[-500:]
    except subprocess.TimeoutExpired:
        stdout, detail = "", f"no answer within {PIP_AUDIT_TIMEOUT}s"
    finally:
        Path(pinned.name).unlink()
    try:
        report: dict[str, Any] = json.loads(stdout)
    except json.JSONDecodeError:
        return {
            "dependencies": [
                {"name": name, "version": version, "skip_reason": f"pip-audit failed: {detail}"}
                for name, version in requirements.items()
            ]
        }
    return report


class SnapshotError(Exception):
    """There is no snapshot to audit with, or it is not one."""


class NoSnapshotError(SnapshotError):
    """No file where the snapshot should be."""


@dataclass(frozen=True)
class Snapshot:
    """Records of the PyPA advisory database for a set of packages, as of a commit of it."""

    date: datetime
    commit: str
    packages: frozenset[str]
    advisories: Mapping[str, list[Mapping[str, Any]]]

    @classmethod
    def load(cls, path: Path) -> Snapshot:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                date=datetime.fromisoformat(data["date"]),
                commit=str(data["commit"]),
                packages=frozenset(canonicalize_name(p) for p in data["packages"]),
                advisories={canonicalize_name(k): v for k, v in data["advisories"].items()},
            )
        except FileNotFoundError:
            raise NoSnapshotError(
                f"no advisory snapshot at {path}: make one with scripts/refresh_advisories.py"
            ) from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SnapshotError(f"{path} is not an advisory snapshot ({exc!r})") from None

    def describe(self) -> str:
        return f"pypa/advisory-database of {self.date:%Y-%m-%d} ({self.commit[:12]})"


def audit_with_snapshot(
    installed: Mapping[str, str], snapshot: Snapshot
) -> tuple[dict[str, list[Vulnerability]], dict[str, str]]:
    """What the snapshot says of each installed package (name -> vulnerabilities), and what it
    cannot say (name -> why)."""
    audited: dict[str, list[Vulnerability]] = {}
    undecided: dict[str, str] = {}
    for name, version in installed.items():
        if name not in snapshot.packages:
            undecided[name] = (
                "the advisory snapshot was not made for it (run scripts/refresh_advisories.py)"
            )
            continue
        try:
            found = [finding(name, version, record) for record in snapshot.advisories.get(name, [])]
        except UndecidableError as exc:
            undecided[name] = f"the advisory snapshot cannot judge {version}: {exc}"
            continue
        audited[name] = [Vulnerability(f.advisory, f.fixed_in) for f in found if f is not None]
    return audited, undecided


def audit(
    installed: Mapping[str, str],
    report: Mapping[str, Any] | None,
    snapshot_path: Path,
) -> tuple[Verdict, Snapshot | None]:
    """The service's report first (None: not asked), then the snapshot for what it left."""
    verdict = Verdict()
    left = dict(installed)
    service_said: dict[str, str] = {}
    if report is not None:
        by_service, skipped = judge_report(report)
        verdict.by_service = {n: v for n, v in by_service.items() if n in installed}
        left = {n: v for n, v in installed.items() if n not in verdict.by_service}
        service_said = {n: skipped.get(n, "not in its report") for n in left}
    if not left:
        return verdict, None
    try:
        snapshot = Snapshot.load(snapshot_path)
    except SnapshotError as exc:
        verdict.not_audited = {n: _both(service_said.get(n), str(exc)) for n in left}
        verdict.without_source = isinstance(exc, NoSnapshotError) and not verdict.by_service
        return verdict, None
    verdict.by_snapshot, undecided = audit_with_snapshot(left, snapshot)
    verdict.not_audited = {n: _both(service_said.get(n), why) for n, why in undecided.items()}
    return verdict, snapshot


def _both(service: str | None, snapshot: str) -> str:
    return f"service: {service}; snapshot: {snapshot}" if service else f"snapshot: {snapshot}"


def report_and_exit_code(
    verdict: Verdict,
    installed: Mapping[str, str],
    snapshot: Snapshot | None,
    now: datetime,
    snapshot_path: Path = DEFAULT_SNAPSHOT,
) -> int:
    fixable = [(n, v) for n, v in verdict.vulnerabilities() if v.fixed_in]
    for name, vulnerability in verdict.vulnerabilities():
        package = f"{name} {installed[name]}: {vulnerability.advisory}"
        if vulnerability.fixed_in:
            print(f"VULNERABLE  {package}, fixed in {', '.join(vulnerability.fixed_in)}")
        else:
            print(f"warning     {package}, no fix released yet")
    if snapshot is not None:
        age = now - snapshot.date
        if age > MAX_SNAPSHOT_AGE:
            banner = "!" * 100
            print(
                f"{banner}\nWARNING: the advisory snapshot is {age.days} days old "
                f"({snapshot.describe()}), over the {MAX_SNAPSHOT_AGE.days} days it is good for:\n"
                "advisories published since are unknown to this audit. Refresh it: python "
                f"scripts/refresh_advisories.py <a mirror of pypa/advisory-database>\n{banner}"
            )
    print(
        f"audited {len(verdict.by_service) + len(verdict.by_snapshot)} of {len(installed)} "
        f"dependencies: {len(verdict.by_service)} by the vulnerability service, "
        f"{len(verdict.by_snapshot)} by the advisory snapshot"
        + (f" ({snapshot.describe()})" if snapshot is not None and verdict.by_snapshot else "")
    )
    failed = False
    if verdict.not_audited:
        failed = True
        print(
            f"{'not audited' if verdict.without_source else 'FAILED'}: "
            f"{len(verdict.not_audited)} of {len(installed)} dependencies could be "
            "audited neither by the vulnerability service nor by the advisory snapshot:"
        )
        for name, why in sorted(verdict.not_audited.items()):
            print(f"    {name} {installed[name]}: {why}")
    if fixable:
        failed = True
        print(
            f"FAILED: {len(fixable)} known vulnerabilities with a fix: bump the pins in "
            "pyproject.toml"
        )
    if failed and verdict.without_source and not fixable:
        banner = "!" * 100
        print(
            f"{banner}\nNOT AUDITED: the vulnerability service answered for no dependency and "
            f"there is no advisory snapshot ({snapshot_path}).\nNothing was audited: make a "
            "snapshot with scripts/refresh_advisories.py and point ADVISORY_SNAPSHOT at it, "
            f"or run where the service answers.\n{banner}"
        )
        return EXIT_WITHOUT_SOURCE
    if failed:
        return 1
    unfixable = len(verdict.vulnerabilities()) - len(fixable)
    print(
        "no known vulnerability with a fix" + (f" ({unfixable} without one)" if unfixable else "")
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, help="judge this pip-audit JSON report")
    parser.add_argument(
        "--offline", action="store_true", help="do not ask the service: the snapshot alone"
    )
    parser.add_argument(
        "--snapshot",
        type=Path,
        default=DEFAULT_SNAPSHOT,
        help=f"the advisory snapshot (default: {DEFAULT_SNAPSHOT})",
    )
    parser.add_argument(
        "--installed", type=Path, help="audit these name==version lines, not this environment"
    )
    parser.add_argument(
        "--requirements", action="store_true", help="print the pinned runtime requirements"
    )
    args = parser.parse_args(argv)
    if args.requirements:
        for name, version in sorted(runtime_requirements().items()):
            print(f"{name}=={version}")
        return 0
    installed = read_installed(args.installed) if args.installed else runtime_requirements()
    report: dict[str, Any] | None
    if args.report:
        report = json.loads(args.report.read_text(encoding="utf-8"))
    elif args.offline:
        report = None
    else:
        report = run_pip_audit(installed)
    verdict, snapshot = audit(installed, report, args.snapshot)
    return report_and_exit_code(verdict, installed, snapshot, datetime.now(UTC), args.snapshot)


if __name__ == "__main__":
    sys.exit(main())
