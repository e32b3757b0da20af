"""Whether an installed version of a package is affected by an advisory in the OSV format (the
records of the PyPA advisory database), and which releases fix it. Pure: no I/O.

A record lists, for each package it affects, ranges and a list of versions
(https://ossf.github.io/osv-schema/#affectedranges-field). A version is affected when it is in the
list, or inside an ECOSYSTEM range: its events (`introduced`, `fixed`, `last_affected`; `limit`
only bounds GIT ranges) are taken in version order, `introduced: "0"` first, and the last of them
at or below the version decides. GIT ranges name commits, not releases: they say nothing about an
installed version, and a record with nothing else cannot be judged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ECOSYSTEM = "PyPI"
# Range types whose events are releases of the package (SEMVER is ordered like PEP 440 for the
# versions it admits).
RELEASE_RANGES = frozenset({"ECOSYSTEM", "SEMVER"})


class UndecidableError(ValueError):
    """The record cannot say whether this version is affected: a version that is not PEP 440,
    an event of a kind OSV does not define, or no range of releases at all."""


@dataclass(frozen=True, slots=True)
class Finding:
    """An advisory that affects the installed version; `fixed_in`: the releases above it that
    fix it, lowest first (empty: no fix released yet)."""

    advisory: str
    aliases: tuple[str, ...]
    fixed_in: tuple[str, ...]


def parse_version(text: object) -> Version:
    try:
        return Version(str(text))
    except InvalidVersion:
        raise UndecidableError(f"{text!r} is not a PEP 440 version") from None


def range_affects(
    version: Version, events: Iterable[Mapping[str, Any]]
) -> tuple[bool, list[Version]]:
    """Whether `version` is inside the range these events draw, and every release the range
    names as fixed."""
    points: list[tuple[str, Version | None]] = []
    for event in events:
        for kind, value in event.items():
            if kind == "limit":
                continue
            if kind not in {"introduced", "fixed", "last_affected"}:
                raise UndecidableError(f"unknown range event {kind!r}")
            # "0": before every release, pre-releases of 0 included.
            points.append(
                (kind, None if kind == "introduced" and str(value) == "0" else parse_version(value))
            )
    # Records do not always list events in order (PYSEC-2023-212: introduced 2.0.0, fixed 2.0.7,
    # introduced 0, fixed 1.26.18); sorted is stable, so an event keeps its place among equals.
    points.sort(key=lambda point: (point[1] is not None, point[1] or Version("0")))
    affected = False
    for kind, at in points:
        if kind == "introduced":
            if at is None or version >= at:
                affected = True
        elif kind == "fixed":
            assert at is not None
            if version >= at:
                affected = False
        elif at is not None and version > at:  # last_affected
            affected = False
    fixed = [at for kind, at in points if kind == "fixed" and at is not None]
    return affected, fixed


def _listed(version: Version, versions: Sequence[object]) -> bool:
    for listed in versions:
        try:
            if Version(str(listed)) == version:
                return True
        except InvalidVersion:
            # An old release with a name PEP 440 refuses cannot be the installed one, which is.
            continue
    return False


def finding(package: str, installed: str, record: Mapping[str, Any]) -> Finding | None:
    """The record's finding for `installed` of `package`, or None when that version is not
    affected (or the record was withdrawn). Raises UndecidableError when the record cannot say."""
    if record.get("withdrawn"):
        return None
    version = parse_version(installed)
    name = canonicalize_name(package)
    judged = affected = False
    fixes: set[Version] = set()
    for entry in record.get("affected") or []:
        about = entry.get("package") or {}
        if (
            about.get("ecosystem") != ECOSYSTEM
            or canonicalize_name(str(about.get("name", ""))) != name
        ):
            continue
        for release_range in entry.get("ranges") or []:
            if release_range.get("type") not in RELEASE_RANGES:
                continue
            judged = True
            inside, fixed = range_affects(version, release_range.get("events") or [])
            affected = affected or inside
            fixes.update(fixed)
        versions = entry.get("versions") or []
        if versions:
            judged = True
            affected = affected or _listed(version, versions)
    if not judged:
        raise UndecidableError(f"{record.get('id')} names no releases of {package}, only commits")
    if not affected:
        return None
    return Finding(
        advisory=str(record.get("id")),
        aliases=tuple(str(alias) for alias in record.get("aliases") or []),
        fixed_in=tuple(str(fix) for fix in sorted(f for f in fixes if f > version)),
    )
