# Sourced by bootstrap.sh: PostgreSQL and RabbitMQ for run.sh (`bring_up_servers run`) and
# test.sh (`bring_up_servers test`).
#
# When both answer at the configured URLs (a TCP connect), nothing is done. Otherwise the missing
# ones are brought up, and the run pointed at them:
#   - a Docker engine answers: run.sh starts docker compose's postgres and rabbitmq services;
#     test.sh starts containers of its own (acme-test-postgres, acme-test-rabbitmq), because the
#     compose file's fixed container names would collide with the compose test;
#   - else, as root with apt-get: Debian's postgresql and rabbitmq-server, installed and started
#     here, set up for the development defaults;
#   - else it says what to install, and fails.
# A server that this script did not install is never started, changed or reconfigured.

# What the apt path installed (one marker file per package) and the password it gave PostgreSQL's
# superuser, readable by root only.
ACME_STATE_DIR=/var/lib/acme-orders

# probe_servers URL...: one line per URL, "up|down HOST PORT", by a TCP connect (before .venv
# exists, so the standard library only). A URL that names a Unix socket (?host=/path) counts as up:
# there is no port to probe, and nothing here could start it.
probe_servers() {
    "$PYTHON" - "$@" <<'PY'
import socket
import sys
from urllib.parse import parse_qs, urlsplit

DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "amqp": 5672, "amqps": 5671}
for url in sys.argv[1:]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
    if "host" in parse_qs(parts.query):
        print("up", host, port)
        continue
    try:
        socket.create_connection((host, port), timeout=3).close()
        print("up", host, port)
    except OSError:
        print("down", host, port)
PY
}

# answers URL: whether a TCP connect to URL succeeds.
answers() {
    local state _
    read -r state _ < <(probe_servers "$1") && [ "$state" = up ]
}

# wait_for_port WHAT URL SECONDS: until URL answers, or fail.
wait_for_port() {
    local what=$1 url=$2 deadline=$((SECONDS + $3))
    until answers "$url"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "$what did not start listening within $3 s" >&2
            return 1
        fi
        sleep 1
    done
}

random_password() {
    "$PYTHON" -c 'import secrets; print(secrets.token_hex(16))'
}

is_local_host() {
    case $1 in 127.0.0.1 | localhost | ::1) return 0 ;; *) return 1 ;; esac
}

# apt_install PACKAGE...: with apt-get, refreshing the package lists once if they are too old to
# have it. Non-interactive: a question from a package's installer would wait forever on a terminal
# whose output we hide.
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "$@" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$@" >/dev/null; }
}

have_apt_as_root() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null
}

docker_engine_answers() {
    command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1
}

# export_if_unset NAME VALUE: point the run at what was brought up, unless the user chose already.
export_if_unset() {
    [ -n "${!1:-}" ] || export "$1=$2"
}

# Once the apt path has installed PostgreSQL, on this run and every later one: its superuser has a
# password, which the tests and the benchmark (acme-orders bench creates its database with
# DATABASE_ADMIN_URL) need. Nothing to do elsewhere (the file is not there, or not readable).
export_saved_admin_url() {
    local url
    url=$(cat "$ACME_STATE_DIR/postgres-admin-url" 2>/dev/null) || return 0
    export_if_unset DATABASE_ADMIN_URL "$url"
    export_if_unset TEST_DATABASE_ADMIN_URL "$url"
}

bring_up_servers() {
    local purpose=$1 database_variable=DATABASE_URL rabbitmq_variable=RABBITMQ_URL
    local database_default=postgresql://acme:acme@127.0.0.1:5432/acme
    export_saved_admin_url
    if [ "$purpose" = test ]; then
        database_variable=TEST_DATABASE_ADMIN_URL rabbitmq_variable=TEST_RABBITMQ_URL
        database_default=postgresql://postgres@127.0.0.1:5432/postgres
    fi
    local pg_state pg_host pg_port mq_state mq_host mq_port
    {
        read -r pg_state pg_host pg_port
        read -r mq_state mq_host mq_port
    } < <(probe_servers "${!database_variable:-$database_default}" \
        "${!rabbitmq_variable:-amqp://guest:guest@127.0.0.1:5672/}")
    [ "$pg_state" = up ] && [ "$mq_state" = up ] && return 0

    local missing=()
    if [ "$pg_state" != up ]; then
        echo "==> no PostgreSQL answers at $pg_host:$pg_port ($database_variable)"
        is_local_host "$pg_host" || cannot_start_remote "$database_variable"
        missing+=(postgresql)
    fi
    if [ "$mq_state" != up ]; then
        echo "==> no RabbitMQ answers at $mq_host:$mq_port ($rabbitmq_variable)"
        is_local_host "$mq_host" || cannot_start_remote "$rabbitmq_variable"
        missing+=(rabbitmq)
    fi

    if docker_engine_answers; then
        if [ "$purpose" = test ]; then
            start_test_containers "$pg_port" "$mq_port" "${missing[@]}"
        else
            start_compose_servers "${missing[@]}"
        fi
    elif have_apt_as_root; then
        install_servers_with_apt "$pg_port" "$mq_port" "${missing[@]}"
        export_saved_admin_url
    else
        say_what_to_install "$purpose"
        exit 1
    fi
}

cannot_start_remote() {
    echo "that is not this machine, so it cannot be started from here: start it there, or" \
        "point $1 at a server that runs" >&2
    exit 1
}

say_what_to_install() {
    local script=./scripts/$1.sh
    cat >&2 <<EOF

$script needs PostgreSQL and RabbitMQ, and can start them itself:
  - run as root on Debian or Ubuntu, it installs and starts Debian's with apt-get: sudo $script
  - with Docker, it starts docker compose's: install Docker Engine and its compose plugin
    (Debian/Ubuntu: sudo apt-get install docker.io docker-compose), then $script
Or install and start them yourself, then run $script again:
  Debian/Ubuntu:  sudo apt-get install postgresql rabbitmq-server
  Fedora:         sudo dnf install postgresql-server rabbitmq-server && sudo postgresql-setup --initdb \\
                    && sudo systemctl start postgresql rabbitmq-server
  and create the role and database of DATABASE_URL:
    sudo -u postgres psql -c "CREATE ROLE acme LOGIN PASSWORD 'acme'" -c "CREATE DATABASE acme OWNER acme"
EOF
    if [ "$1" = test ]; then
        cat >&2 <<EOF
  The tests also need a superuser over TCP (TEST_DATABASE_ADMIN_URL, by default
  postgresql://postgres@127.0.0.1:5432/postgres) and rabbitmqctl on PATH (TEST_RABBITMQCTL).
EOF
    fi
}

# --- Docker (untested here: no Docker engine ran on the machine this was written on) ---------

docker_compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose "$@"
    elif command -v docker-compose >/dev/null; then
        docker-compose "$@"
    else
        echo "a Docker engine answers but neither 'docker compose' nor docker-compose is" \
            "installed: install the compose plugin (apt-get install docker-compose)" >&2
        return 1
    fi
}

# compose_setting NAME DEFAULT: NAME from the environment, else from .env (which docker compose
# reads too), else DEFAULT.
compose_setting() {
    if [ -n "${!1:-}" ]; then
        echo "${!1}"
    elif [ -f .env ] && grep -q "^$1=" .env; then
        grep "^$1=" .env | tail -n 1 | cut -d= -f2- | sed -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'$/\1/"
    else
        echo "$2"
    fi
}

# wait_until_healthy CONTAINER SECONDS: by the healthcheck the container's image or compose gives.
wait_until_healthy() {
    local deadline=$((SECONDS + $2)) health
    until health=$(docker inspect -f '{{.State.Health.Status}}' "$1" 2>/dev/null) \
        && [ "$health" = healthy ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "container $1 is not healthy after $2 s (${health:-not found}): docker logs $1" >&2
            return 1
        fi
        sleep 2
    done
}

start_compose_servers() {
    local services=() service
    for service in "$@"; do services+=("$([ "$service" = postgresql ] && echo postgres || echo rabbitmq)"); done
    echo "==> starting docker compose's ${services[*]}"
    docker_compose up -d "${services[@]}"
    for service in "$@"; do
        if [ "$service" = postgresql ]; then
            wait_until_healthy eda-postgres 120
            export_if_unset DATABASE_URL "postgresql://acme:$(compose_setting POSTGRES_PASSWORD acme)@127.0.0.1:${POSTGRES_PORT:-5432}/acme"
        else
            wait_until_healthy eda-rabbitmq 180
            export_if_unset RABBITMQ_URL "amqp://eda_user:$(compose_setting RABBITMQ_PASSWORD eda_pass)@127.0.0.1:${RABBITMQ_PORT:-5672}/"
        fi
    done
}

# container_env CONTAINER NAME: the value of NAME in the container's environment.
container_env() {
    docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$1" | sed -n "s/^$2=//p"
}

# start_container NAME ARG...: start the container if it exists, else `docker run -d` it.
start_container() {
    local name=$1
    shift
    if docker container inspect "$name" >/dev/null 2>&1; then
        docker start "$name" >/dev/null
    else
        docker run -d --name "$name" "$@" >/dev/null
    fi
}

# The tests' own servers, published on 127.0.0.1 only, with a random password each: made when the
# container is created, handed to docker in its environment (not its arguments, which ps shows),
# read back from the container afterwards.
start_test_containers() {
    local pg_port=$1 mq_port=$2 password
    shift 2
    for service in "$@"; do
        if [ "$service" = postgresql ]; then
            echo "==> starting container acme-test-postgres (postgres:15) on 127.0.0.1:$pg_port"
            POSTGRES_PASSWORD=$(random_password) start_container acme-test-postgres \
                -p "127.0.0.1:$pg_port:5432" -e POSTGRES_PASSWORD \
                --health-cmd "pg_isready -h 127.0.0.1 -U postgres" --health-interval 2s \
                postgres:15
            wait_until_healthy acme-test-postgres 120
            password=$(container_env acme-test-postgres POSTGRES_PASSWORD)
            export_if_unset TEST_DATABASE_ADMIN_URL "postgresql://postgres:$password@127.0.0.1:$pg_port/postgres"
            # acme-orders bench (tests/e2e/test_bench.py) creates its database with these.
            export_if_unset DATABASE_ADMIN_URL "$TEST_DATABASE_ADMIN_URL"
            export_if_unset DATABASE_URL "postgresql://acme:acme@127.0.0.1:$pg_port/acme"
        else
            echo "==> starting container acme-test-rabbitmq (rabbitmq:3.13-management) on 127.0.0.1:$mq_port"
            RABBITMQ_DEFAULT_PASS=$(random_password) start_container acme-test-rabbitmq \
                --hostname acme-test-rabbitmq -p "127.0.0.1:$mq_port:5672" \
                -e RABBITMQ_DEFAULT_USER=acme-test -e RABBITMQ_DEFAULT_PASS \
                -e RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none" \
                --health-cmd "rabbitmq-diagnostics -q check_port_connectivity" --health-interval 5s \
                rabbitmq:3.13-management
            wait_until_healthy acme-test-rabbitmq 180
            password=$(container_env acme-test-rabbitmq RABBITMQ_DEFAULT_PASS)
            export_if_unset TEST_RABBITMQ_URL "amqp://acme-test:$password@127.0.0.1:$mq_port/"
            export_if_unset TEST_RABBITMQ_USER acme-test
            # -i: import_definitions reads the definitions from stdin, which the container can
            # see where it cannot see our files.
            export_if_unset TEST_RABBITMQCTL "docker exec -i acme-test-rabbitmq rabbitmqctl"
            export_if_unset RABBITMQ_URL "$TEST_RABBITMQ_URL"
        fi
    done
}

# --- apt ------------------------------------------------------------------------------------

# installed_by_us PACKAGE: whether the apt path installed it (and so may start and configure it).
installed_by_us() {
    [ -f "$ACME_STATE_DIR/installed-$1" ]
}

package_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

# install_ours PACKAGE PROBE_PACKAGE: install PACKAGE unless it is there; refuse if it is there
# but was not installed by this script (PROBE_PACKAGE tells whether a server is installed).
install_ours() {
    if installed_by_us "$1"; then
        package_installed "$2" && return 0
    elif package_installed "$2"; then
        echo "$1 is installed but not running, and this script did not install it, so it" \
            "leaves it alone: start it yourself, then run this again" >&2
        exit 1
    fi
    echo "==> installing $1 with apt-get"
    # Marked before installing: a run interrupted half-way finishes the job next time.
    echo "installed by acme-orders scripts/bootstrap.sh on $(date -u +%FT%TZ)" \
        >"$ACME_STATE_DIR/installed-$1"
    if ! apt_install "$1"; then
        echo "apt-get could not install $1" >&2
        exit 1
    fi
}

# The cluster on PORT (Debian's pg_lsclusters: version, name, port, status, ...).
start_postgresql() {
    local port=$1 version name cluster_port status
    if ! pg_lsclusters --no-header | grep -q .; then
        # shellcheck disable=SC2012 # version numbers, nothing odd in them
        pg_createcluster "$(ls /usr/lib/postgresql | sort -V | tail -n 1)" main >/dev/null
    fi
    while read -r version name cluster_port status _; do
        [ "$cluster_port" = "$port" ] || continue
        if [ "$status" != online ]; then
            echo "==> starting PostgreSQL $version/$name"
            pg_ctlcluster "$version" "$name" start
        fi
        return 0
    done < <(pg_lsclusters --no-header)
    echo "the PostgreSQL this script installed does not listen on port $port:" \
        "$(pg_lsclusters --no-header)" >&2
    exit 1
}

# The development defaults of DATABASE_URL (role acme, password acme, owning database acme), and
# a superuser the tests reach over TCP. That superuser is postgres with a random password kept in
# a root-only file, rather than a password written in the README or trust on 127.0.0.1: either of
# those would give every local user of a shared machine a superuser, which can run programs as
# the postgres user. Root, who alone reads the file, can become postgres anyway. Debian's
# pg_hba.conf already asks for a password over TCP, so it stays as installed. The SQL goes through
# stdin: a password in psql's arguments would show in ps.
configure_postgresql() {
    local port=$1 password
    [ -s "$ACME_STATE_DIR/postgres-admin-url" ] && return 0
    password=$(random_password)
    (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$port" -d postgres) >/dev/null <<SQL
ALTER ROLE postgres PASSWORD '$password';
SELECT 'CREATE ROLE acme LOGIN PASSWORD ''acme''' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'acme') \gexec
SELECT 'CREATE DATABASE acme OWNER acme' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'acme') \gexec
SQL
    (umask 077 && echo "postgresql://postgres:$password@127.0.0.1:$port/postgres" \
        >"$ACME_STATE_DIR/postgres-admin-url")
    echo "==> PostgreSQL: role acme (password acme) owns database acme; the superuser postgres's" \
        "URL, with its password, is in $ACME_STATE_DIR/postgres-admin-url (root only)"
}

start_rabbitmq() {
    echo "==> starting RabbitMQ"
    if [ -d /run/systemd/system ]; then
        systemctl start rabbitmq-server
    else
        # systemd's unit gives RabbitMQ LimitNOFILE=65536. Started by root from a shell, Debian's
        # wrapper su's to rabbitmq and PAM gives it the default 1024: about 900 file handles,
        # which the quorum queues of a few test runs use up, and from then on every new
        # connection waits for one, for ever. So the limit is raised here (to 65536, or the hard
        # limit if that is lower) and the wrapper run as rabbitmq already (setpriv: no PAM),
        # which then starts the server with this limit.
        if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null && id rabbitmq >/dev/null 2>&1; then
            (
                ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
                cd /var/lib/rabbitmq
                HOME=/var/lib/rabbitmq exec setpriv --reuid=rabbitmq --regid=rabbitmq \
                    --init-groups rabbitmq-server -detached
            ) >/dev/null
        else
            rabbitmq-server -detached >/dev/null
        fi
    fi
}

install_servers_with_apt() {
    local pg_port=$1 mq_port=$2 service
    shift 2
    mkdir -p "$ACME_STATE_DIR"
    chmod 700 "$ACME_STATE_DIR"
    for service in "$@"; do
        if [ "$service" = postgresql ]; then
            install_ours postgresql postgresql-common
            # Debian's package may have started it already (where an init system runs).
            answers "postgresql://127.0.0.1:$pg_port" || start_postgresql "$pg_port"
            wait_for_port PostgreSQL "postgresql://127.0.0.1:$pg_port" 60
            configure_postgresql "$pg_port"
        else
            if ! installed_by_us rabbitmq-server && ! package_installed rabbitmq-server; then
                # Loopback only, written before the package starts the broker: guest/guest (the
                # default RABBITMQ_URL) is refused from other hosts anyway.
                mkdir -p /etc/rabbitmq
                [ -e /etc/rabbitmq/rabbitmq.conf ] \
                    || echo "listeners.tcp.local = 127.0.0.1:$mq_port" >/etc/rabbitmq/rabbitmq.conf
            fi
            install_ours rabbitmq-server rabbitmq-server
            answers "amqp://127.0.0.1:$mq_port" || start_rabbitmq
            wait_for_port RabbitMQ "amqp://127.0.0.1:$mq_port" 120
        fi
    done
}
