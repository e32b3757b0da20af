# Sourced by run.sh and test.sh, with what the caller is for: `source bootstrap.sh run` or `test`.
# PostgreSQL and RabbitMQ (brought up when they do not answer: servers.sh); a virtualenv in .venv
# with the package and its pinned dependencies (the benchmark with its extra `chart`, matplotlib,
# for the chart of `bench --sweep`), reinstalled only when pyproject.toml changed; the
# programs `acme-orders bench` (and its test) runs: wrk, and pgbench for the database ceiling; and
# the Chromium the browser tests of the live board and /docs drive (Debian's, through Playwright:
# no browser download). What a bare Debian or Ubuntu lacks is installed with apt-get when run as
# root, or named otherwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/servers.sh

# need_package PACKAGE WHAT_FOR: install it with apt-get as root; otherwise say how.
need_package() {
    if have_apt_as_root; then
        echo "==> installing $1 ($2)"
        apt_install "$1" || echo "could not install $1; $2" >&2
    else
        echo "$1 is missing; $2: apt-get install $1 (as root)" >&2
    fi
}

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "acme-orders needs Python 3.11 or newer as \$PYTHON (found: $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi

bring_up_servers "${1:?bootstrap.sh is sourced with run or test}"

command -v wrk >/dev/null || need_package wrk "acme-orders bench needs wrk"
command -v pgbench >/dev/null || need_package postgresql-client "acme-orders bench needs pgbench"
command -v chromium >/dev/null \
    || need_package chromium "the browser tests (tests/support/browser.py) need it"
# Playwright drives Chromium through a node binary in its wheel, which needs libatomic: a minimal
# Debian lacks it.
grep -q 'libatomic\.so\.1 ' <(PATH=$PATH:/usr/sbin:/sbin ldconfig -p) \
    || need_package libatomic1 "Playwright's driver, for the browser test, needs libatomic.so.1"

# Debian and Ubuntu ship the interpreter's ensurepip, which venv needs, in a package of its own.
# A .venv that such a venv left without pip (it has no stamp: nothing was installed) is made again.
stamp=".venv/.installed-$(cat pyproject.toml bench/pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] && [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import pip' 2>/dev/null; then
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
        need_package "python$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv" \
            "python -m venv needs the ensurepip it holds"
        "$PYTHON" -c 'import ensurepip' 2>/dev/null || exit 1
    fi
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv || { rm -rf .venv; exit 1; }
fi
if [ ! -f "$stamp" ]; then
    echo "==> installing acme-orders, its benchmark (./bench) and their dependencies into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]" -e "./bench[chart]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
