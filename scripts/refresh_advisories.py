"""Make the advisory snapshot scripts/audit_dependencies.py audits with when the vulnerability
service does not answer: the records of the PyPA advisory database for our runtime dependencies.

    python scripts/refresh_advisories.py MIRROR [--output FILE] [--package NAME ...]

MIRROR is a git directory of pypa/advisory-database (a clone, or a bare mirror); its newest
commit is read, whatever is checked out. The snapshot holds, for every package of the runtime
dependency closure as installed here (the same list the audit audits) and any --package, the
records of vulns/<package>/ with what the audit needs (id, aliases, dates, withdrawn, and the
ranges and versions for that package; not the prose), the list of packages it was made for (a
package missing from it cannot be audited with it; one in it without records has no known
advisory), and the date of the mirror's newest commit, which is what the audit calls its age.

Only the runtime closure: it is what the image runs and what the audit audits; the dev tools
(pytest, ruff, pip-audit, ...) and the benchmark run on developers' machines and CI, against
loopback, and are left to a developer's own pip-audit. The records are the database's, under
CC-BY-4.0 (its LICENSE): the snapshot says where they come from.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from audit_dependencies import DEFAULT_SNAPSHOT, runtime_requirements
from packaging.utils import canonicalize_name

SOURCE = "pypa/advisory-database"
KEPT_FIELDS = ("id", "aliases", "published", "modified", "withdrawn")


def git(mirror: Path, *args: str) -> str:
    return subprocess.run(  # noqa: S603 (git, our arguments)
        ["git", f"--git-dir={mirror}", *args],  # noqa: S607 (git from PATH, as a developer runs it)
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout


def records_in(mirror: Path, packages: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """package -> its records in the mirror's newest commit, trimmed to what the audit reads."""
    wanted = {canonicalize_name(p) for p in packages}
    paths: dict[str, list[str]] = {}
    for path in git(mirror, "ls-tree", "-r", "--name-only", "HEAD", "--", "vulns/").splitlines():
        parts = PurePosixPath(path).parts
        if len(parts) == 3 and parts[2].endswith((".yaml", ".yml", ".json")):
            directory = canonicalize_name(parts[1])
            if directory in wanted:
                paths.setdefault(directory, []).append(path)
    found: dict[str, list[dict[str, Any]]] = {}
    for package, files in sorted(paths.items()):
        for path in sorted(files):
            record = yaml.safe_load(git(mirror, "show", f"HEAD:{path}"))
            affected = [
                {key: entry[key] for key in ("package", "ranges", "versions") if key in entry}
                for entry in record.get("affected") or []
                if canonicalize_name(str((entry.get("package") or {}).get("name", ""))) == package
            ]
            if not affected:
                continue
            trimmed = {key: record[key] for key in KEPT_FIELDS if key in record}
            found.setdefault(package, []).append({**trimmed, "affected": affected})
    return found


def snapshot(mirror: Path, packages: Iterable[str]) -> dict[str, Any]:
    packages = sorted({canonicalize_name(p) for p in packages})
    return {
        "source": SOURCE,
        "license": "CC-BY-4.0, the advisory database's: see its LICENSE",
        "commit": git(mirror, "rev-parse", "HEAD").strip(),
        "date": git(mirror, "log", "-1", "--format=%cI", "HEAD").strip(),
        "packages": packages,
        "advisories": records_in(mirror, packages),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mirror", type=Path, help="a git directory of pypa/advisory-database")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_SNAPSHOT,
        help=f"where to write the snapshot (default: {DEFAULT_SNAPSHOT})",
    )
    parser.add_argument(
        "--package", action="append", default=[], help="a package to include besides the runtime's"
    )
    args = parser.parse_args(argv)
    try:
        made = snapshot(args.mirror, [*runtime_requirements(), *args.package])
    except subprocess.CalledProcessError as exc:
        print(
            f"{args.mirror}: not a git directory of {SOURCE}? {exc.stderr.strip()}", file=sys.stderr
        )
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(made, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8"
    )
    count = sum(len(records) for records in made["advisories"].values())
    print(
        f"{args.output}: {count} records of {len(made['advisories'])} of {len(made['packages'])} "
        f"packages, {SOURCE} at {made['commit'][:12]} of {made['date']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
