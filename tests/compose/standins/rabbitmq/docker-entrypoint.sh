#!/usr/bin/env bash
# The stand-in's entrypoint: the official rabbitmq image's start-up, as far as our compose file
# uses it. RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS become the default user of a blank node
# (RabbitMQ creates it only when it has no definitions to load, as in the official image); the
# server runs in the foreground as the rabbitmq user.
set -Eeuo pipefail

if [ "${1:-}" = rabbitmq-server ] && [ "$(id -u)" = 0 ]; then
    find /var/lib/rabbitmq \! -user rabbitmq -exec chown rabbitmq:rabbitmq '{}' +
    defaults=/etc/rabbitmq/conf.d/05-default-user.conf
    : > "$defaults"
    if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
        echo "default_user = $RABBITMQ_DEFAULT_USER" >> "$defaults"
    fi
    if [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then
        echo "default_pass = $RABBITMQ_DEFAULT_PASS" >> "$defaults"
    fi
    chown rabbitmq:rabbitmq "$defaults"
    exec runuser -u rabbitmq -- "$0" "$@"
fi

if [ "${1:-}" = rabbitmq-server ] && [ -z "${RABBITMQ_USE_LONGNAME:-}" ] \
        && [ "$(hostname)" != "$(hostname -s)" ]; then
    export RABBITMQ_USE_LONGNAME=true
fi
exec "$@"
