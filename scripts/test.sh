#!/usr/bin/env bash
# Set up and run every check: lint, types, the import contracts, and the test suite against the real PostgreSQL and
# RabbitMQ (each run creates its own database and vhost, and removes them afterwards), brought up
# first when none answers (containers of the tests' own, or Debian's packages: bootstrap.sh).
# Extra arguments go to pytest, e.g. scripts/test.sh -k happy_path
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" test

echo "==> ruff"
ruff check .
ruff format --check .
echo "==> mypy"
mypy
echo "==> import contracts (pyproject.toml: the layers, and what may import what)"
lint-imports --no-cache
echo "==> dependency audit (runtime dependencies: pip-audit, else the advisory snapshot; fails on a known vulnerability with a fix, or a dependency audited neither way)"
python scripts/audit_dependencies.py
echo "==> pytest"
exec pytest "$@"
