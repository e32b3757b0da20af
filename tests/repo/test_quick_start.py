"""The quick start (`./scripts/run.sh`) serves the API without keys, as the README's curl examples
need, unless AUTH_DISABLED says otherwise; the settings themselves default to keys required."""

from __future__ import annotations

import subprocess
from pathlib import Path

RUN_SH = Path(__file__).resolve().parents[2] / "scripts" / "run.sh"


def auth_disabled_after_run_sh(environment: dict[str, str]) -> str:
    """The value run.sh exports, from its own line, without running the rest of it."""
    [line] = [line for line in RUN_SH.read_text().splitlines() if "export AUTH_DISABLED" in line]
    result = subprocess.run(
        ["bash", "-c", f'{line}; printf %s "$AUTH_DISABLED"'],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return result.stdout


def test_run_sh_disables_auth_by_default() -> None:
    assert auth_disabled_after_run_sh({}) == "1"


def test_run_sh_leaves_auth_on_when_asked() -> None:
    assert auth_disabled_after_run_sh({"AUTH_DISABLED": "0"}) == "0"
