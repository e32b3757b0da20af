"""scripts/advisory_ranges.py: whether an installed version is affected by an OSV record, and
which releases fix it. The fixtures restate the ranges of real records of the PyPA advisory
database (their ids, aliases and events; not the files), and the shapes the OSV schema allows
that those do not show."""

from __future__ import annotations

from typing import Any

import pytest
from advisory_ranges import Finding, UndecidableError, finding

# urllib3's PYSEC-2023-212 (CVE-2023-45803): two affected lines of releases, its events out of
# order as the record has them, and a GIT range beside them.
URLLIB3_PYSEC_2023_212: dict[str, Any] = {
    "id": "PYSEC-2023-212",
    "aliases": ["CVE-2023-45803", "GHSA-g4mx-q9vg-27p4"],
    "affected": [
        {
            "package": {"ecosystem": "PyPI", "name": "urllib3"},
            "ranges": [
                {
                    "type": "GIT",
                    "repo": "https://github.com/urllib3/urllib3",
                    "events": [
                        {"introduced": "0"},
                        {"fixed": "4e98d57809dacab1cbe625fddeec1a290c478ea9"},
                    ],
                },
                {
                    "type": "ECOSYSTEM",
                    "events": [
                        {"introduced": "2.0.0"},
                        {"fixed": "2.0.7"},
                        {"introduced": "0"},
                        {"fixed": "1.26.18"},
                    ],
                },
            ],
            "versions": ["1.26.17", "2.0.0", "2.0.6"],
        }
    ],
}

# jinja2's PYSEC-2021-66 (CVE-2020-28493): everything before 2.11.3, the package named as the
# record names it.
JINJA2_PYSEC_2021_66: dict[str, Any] = {
    "id": "PYSEC-2021-66",
    "aliases": ["CVE-2020-28493"],
    "affected": [
        {
            "package": {"ecosystem": "PyPI", "name": "jinja2"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2.11.3"}]}],
        }
    ],
}


def record(
    *ranges: dict[str, Any], versions: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "package": {"ecosystem": "PyPI", "name": "demo"},
        "ranges": list(ranges),
    }
    if versions is not None:
        entry["versions"] = versions
    return {"id": "TEST-1", "affected": [entry], **extra}


def ecosystem(*events: dict[str, str]) -> dict[str, Any]:
    return {"type": "ECOSYSTEM", "events": list(events)}


@pytest.mark.parametrize(
    ("installed", "fixed_in"),
    [
        ("1.25.11", ("1.26.18", "2.0.7")),
        ("1.26.17", ("1.26.18", "2.0.7")),
        ("2.0.0", ("2.0.7",)),
        ("2.0.7rc1", ("2.0.7",)),
    ],
)
def test_a_version_inside_either_line_is_affected_and_fixed_by_the_releases_above_it(
    installed: str, fixed_in: tuple[str, ...]
) -> None:
    assert finding("urllib3", installed, URLLIB3_PYSEC_2023_212) == Finding(
        "PYSEC-2023-212", ("CVE-2023-45803", "GHSA-g4mx-q9vg-27p4"), fixed_in
    )


@pytest.mark.parametrize("installed", ["1.26.18", "1.26.20", "2.0.7", "2.8.0"])
def test_a_fixed_release_and_those_after_it_are_not_affected(installed: str) -> None:
    assert finding("urllib3", installed, URLLIB3_PYSEC_2023_212) is None


def test_introduced_zero_covers_every_release_before_the_fix_and_names_match_canonically() -> None:
    for installed in ("0.1.dev0", "2.10", "2.11.2"):
        found = finding("Jinja2", installed, JINJA2_PYSEC_2021_66)
        assert found is not None
        assert found.fixed_in == ("2.11.3",)
    assert finding("jinja2", "2.11.3", JINJA2_PYSEC_2021_66) is None
    assert finding("jinja2", "3.1.6", JINJA2_PYSEC_2021_66) is None


def test_last_affected_includes_that_release_and_leaves_no_fix() -> None:
    advisory = record(ecosystem({"introduced": "1.0"}, {"last_affected": "1.4"}))

    assert finding("demo", "0.9", advisory) is None
    assert finding("demo", "1.4", advisory) == Finding("TEST-1", (), ())
    assert finding("demo", "1.4.1", advisory) is None


def test_a_limit_bounds_only_git_ranges_and_is_ignored_for_releases() -> None:
    advisory = record(ecosystem({"introduced": "1.0"}, {"limit": "1.2"}, {"fixed": "2.0"}))

    assert finding("demo", "1.5", advisory) == Finding("TEST-1", (), ("2.0",))


def test_a_listed_version_is_affected_even_outside_the_ranges() -> None:
    advisory = record(ecosystem({"introduced": "0"}, {"fixed": "1.0"}), versions=["1.1", "junk-1"])

    assert finding("demo", "1.1", advisory) == Finding("TEST-1", (), ())
    assert finding("demo", "1.1.0", advisory) is not None  # the same release, PEP 440 says
    assert finding("demo", "1.2", advisory) is None


def test_a_withdrawn_record_affects_nothing() -> None:
    advisory = record(ecosystem({"introduced": "0"}), withdrawn="2024-01-01T00:00:00Z")

    assert finding("demo", "1.0", advisory) is None


def test_entries_of_other_packages_or_ecosystems_do_not_count() -> None:
    advisory = record(ecosystem({"introduced": "0"}))
    advisory["affected"][0]["package"] = {"ecosystem": "npm", "name": "demo"}
    advisory["affected"].append(
        {
            "package": {"ecosystem": "PyPI", "name": "other"},
            "ranges": [ecosystem({"introduced": "0"})],
        }
    )

    with pytest.raises(UndecidableError, match="names no releases of demo"):
        finding("demo", "1.0", advisory)


@pytest.mark.parametrize(
    ("advisory", "installed", "why"),
    [
        (
            record({"type": "GIT", "events": [{"introduced": "0"}, {"fixed": "abc123"}]}),
            "1.0",
            "only commits",
        ),
        (record(ecosystem({"introduced": "0"}, {"fixed": "1.0"})), "not a version", "PEP 440"),
        (record(ecosystem({"introduced": "0"}, {"fixed": "v1..0"})), "1.0", "PEP 440"),
        (record(ecosystem({"introduced": "0"}, {"patched": "1.0"})), "1.0", "unknown range event"),
    ],
    ids=["git only", "installed version", "event version", "event kind"],
)
def test_a_record_that_cannot_be_judged_says_so(
    advisory: dict[str, Any], installed: str, why: str
) -> None:
    with pytest.raises(UndecidableError, match=why):
        finding("demo", installed, advisory)
