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
# Exit 3: nothing could be audited here (no service, no snapshot). The audit printed a NOT AUDITED
# banner; the tests still run. Any other failure stops the build.
audit_status=0
python scripts/audit_dependencies.py || audit_status=$?
if [[ $audit_status -eq 3 ]]; then
    echo "WARNING: the dependency audit had no source of advisories on this machine (see above)" >&2
elif [[ $audit_status -ne 0 ]]; then
    exit "$audit_status"
fi
echo "==> pytest"
exec pytest "$@"
