#!/usr/bin/env bash
# The stand-in's entrypoint: the official postgres image's start-up, as far as our compose file
# uses it. On an empty PGDATA: initdb with POSTGRES_USER as the superuser and POSTGRES_PASSWORD
# as its password, POSTGRES_DB created, the scripts of /docker-entrypoint-initdb.d run against a
# server that listens on the socket only; then the real server, listening on every address of
# the container. As in the official image, initdb's own rules trust the container's socket and
# loopback, and one more line asks every other host for the password.
set -Eeuo pipefail

if [ "${1:-}" = postgres ] && [ "$(id -u)" = 0 ]; then
    install -d -o postgres -g postgres -m 700 "$PGDATA"
    chown -R postgres:postgres "$PGDATA"
    exec runuser -u postgres -- "$0" "$@"
fi

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_USER:=postgres}"
    : "${POSTGRES_DB:=$POSTGRES_USER}"
    : "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        echo "error: database is uninitialized and superuser password is not specified:" \
             "set POSTGRES_PASSWORD" >&2
        exit 1
    fi
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
        --encoding=UTF8 ${POSTGRES_INITDB_ARGS:-}
    printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >> "$PGDATA/pg_hba.conf"

    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start
    psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
    if [ "$POSTGRES_DB" != postgres ]; then
        # From stdin: psql interpolates its variables there, not in -c.
        "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
            *.sh)
                echo "running $script"
                if [ -x "$script" ]; then "$script"; else . "$script"; fi
                ;;
            *.sql)
                echo "running $script"
                "${psql[@]}" --dbname "$POSTGRES_DB" -f "$script"
                ;;
            *) [ -e "$script" ] && echo "ignoring $script" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo "PostgreSQL init process complete; ready for start up."
fi

if [ "${1:-}" = postgres ]; then
    shift
    exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi
exec "$@"
