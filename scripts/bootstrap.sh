# Sourced by run.sh and test.sh: a virtualenv in .venv with the package and its pinned
# dependencies, reinstalled only when pyproject.toml changed; the programs `acme-orders bench`
# (and its test) runs: wrk, and pgbench for the database ceiling; and the Chromium the browser
# tests of the live board and /docs drive (Debian's, through Playwright: no browser download).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# install_program COMMAND DEBIAN_PACKAGE [WHO_NEEDS_IT]: with apt-get as root when missing;
# otherwise say how.
install_program() {
    local needed_by=${3:-acme-orders bench}
    command -v "$1" >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "==> installing $2 (for $1)"
        if ! { apt-get install -y -qq "$2" >/dev/null 2>&1 \
                || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$2" >/dev/null; }; }; then
            echo "could not install $2; $needed_by needs $1" >&2
        fi
    else
        echo "$1 is missing; $needed_by needs it: apt-get install $2 (as root)" >&2
    fi
}
install_program wrk wrk
install_program pgbench postgresql-client
install_program chromium chromium "the browser tests (tests/e2e/browser.py)"

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "acme-orders needs Python 3.11 or newer as \$PYTHON (found: $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "==> installing acme-orders and its dependencies into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
