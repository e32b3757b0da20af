"""Write the AsyncAPI document of the events, asyncapi.yaml at the repository root, from the code
(acme_orders.ops.asyncapi); or, with --check, fail if the file is not what the code says.

    python scripts/generate_asyncapi.py            # (re)write asyncapi.yaml
    python scripts/generate_asyncapi.py --check    # exit 1 if asyncapi.yaml is out of date

A dev tool: PyYAML is a dev dependency, not one of the services'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from acme_orders.ops.asyncapi import asyncapi_document

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "asyncapi.yaml"
HEADER = (
    "# The events of acme-orders, generated from the code by scripts/generate_asyncapi.py: do not\n"
    "# edit by hand. tests/repo/test_asyncapi.py fails when this file and the code disagree.\n"
)


class _Dumper(yaml.SafeDumper):
    """Writes text of several lines as a literal block (`|`), line for line."""


def _text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _text)


def render() -> str:
    body = yaml.dump(
        asyncapi_document(),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
        default_flow_style=False,
    )
    return HEADER + body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if the file is out of date"
    )
    args = parser.parse_args()
    wanted = render()
    current = DOCUMENT.read_text(encoding="utf-8") if DOCUMENT.exists() else None
    if args.check:
        if current != wanted:
            print(
                f"{DOCUMENT.name} is out of date: run python scripts/generate_asyncapi.py",
                file=sys.stderr,
            )
            return 1
        print(f"{DOCUMENT.name} is up to date")
        return 0
    if current == wanted:
        print(f"{DOCUMENT.name} is up to date")
    else:
        DOCUMENT.write_text(wanted, encoding="utf-8")
        print(f"wrote {DOCUMENT.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
