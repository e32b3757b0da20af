"""Audit the runtime dependencies for known vulnerabilities, with pip-audit.

What is audited is what the services run with: the dependencies of acme-orders (not its dev
extras) as installed from the pins in pyproject.toml, and everything they pulled in, each at its
installed version. The build fails (exit 1) on a known vulnerability that has a fixed release:
bump the pin (or the package that pulls it in). A vulnerability with no fix yet is reported and
does not fail the build: there is nothing to bump to. A dependency the vulnerability service could
not look up is reported as NOT audited.

    python scripts/audit_dependencies.py              # run pip-audit and judge its report
    python scripts/audit_dependencies.py --report F   # judge a pip-audit JSON report instead
    python scripts/audit_dependencies.py --requirements   # print what would be audited
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "acme-orders"


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


@dataclass
class Verdict:
    fixable: list[str] = field(default_factory=list)
    unfixable: list[str] = field(default_factory=list)
    not_audited: list[str] = field(default_factory=list)
    audited: int = 0


def judge(report: dict[str, Any]) -> Verdict:
    verdict = Verdict()
    for dependency in report.get("dependencies", []):
        package = " ".join(str(dependency[key]) for key in ("name", "version") if key in dependency)
        if "skip_reason" in dependency:
            verdict.not_audited.append(f"{package}: {dependency['skip_reason']}")
            continue
        verdict.audited += 1
        for vulnerability in dependency.get("vulns", []):
            fixes = vulnerability.get("fix_versions") or []
            line = f"{package}: {vulnerability['id']}"
            if fixes:
                verdict.fixable.append(f"{line}, fixed in {', '.join(fixes)}")
            else:
                verdict.unfixable.append(f"{line}, no fix released yet")
    return verdict


def run_pip_audit(requirements: dict[str, str]) -> dict[str, Any]:
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
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        Path(pinned.name).unlink()
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        # pip-audit could not run at all (no network, say): nothing was audited.
        detail = " ".join(result.stderr.split())[-500:]
        return {
            "dependencies": [
                {"name": name, "version": version, "skip_reason": f"pip-audit failed: {detail}"}
                for name, version in requirements.items()
            ]
        }
    return report


def report_and_exit_code(verdict: Verdict) -> int:
    for line in verdict.fixable:
        print(f"VULNERABLE  {line}")
    for line in verdict.unfixable:
        print(f"warning     {line}")
    if verdict.not_audited:
        print(
            f"warning: {len(verdict.not_audited)} of "
            f"{len(verdict.not_audited) + verdict.audited} dependencies were NOT audited "
            "(the vulnerability service did not answer for them), e.g.:"
        )
        for line in verdict.not_audited[:3]:
            print(f"    {line}")
    if verdict.fixable:
        print(
            f"{len(verdict.fixable)} known vulnerabilities with a fix: bump the pins in "
            "pyproject.toml"
        )
        return 1
    print(
        f"{verdict.audited} dependencies audited: no known vulnerability with a fix"
        + (f" ({len(verdict.unfixable)} without one)" if verdict.unfixable else "")
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, help="judge this pip-audit JSON report")
    parser.add_argument(
        "--requirements", action="store_true", help="print the pinned runtime requirements"
    )
    args = parser.parse_args(argv)
    if args.requirements:
        for name, version in sorted(runtime_requirements().items()):
            print(f"{name}=={version}")
        return 0
    if args.report:
        report = json.loads(args.report.read_text(encoding="utf-8"))
    else:
        report = run_pip_audit(runtime_requirements())
    return report_and_exit_code(judge(report))


if __name__ == "__main__":
    sys.exit(main())
