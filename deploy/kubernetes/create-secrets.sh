#!/usr/bin/env bash
# The Secrets deploy/kubernetes reads, each with a new random password: the manifests hold none.
#
#   deploy/kubernetes/create-secrets.sh            create the missing ones (existing ones are
#                                                  kept), and the namespace if it is missing
#   deploy/kubernetes/create-secrets.sh --dry-run  print them all as YAML and touch nothing
#
# NAMESPACE (default acme-orders) is where they go. Each Secret is of type basic-auth with the
# keys username and password: the PostgreSQL roles' for CloudNativePG (labelled cnpg.io/reload,
# so that a changed password is applied at once), the RabbitMQ users' for the Messaging Topology
# Operator; the services and KEDA read the same keys. The passwords are 48 hex digits: they go
# into DATABASE_URL and RABBITMQ_URL as they are, so a password of your own must be URL-safe too.
# The CA of PostgreSQL (postgres-ca) is not here: CloudNativePG makes it.
set -euo pipefail

namespace=${NAMESPACE:-acme-orders}
dry_run=0
case "${1:-}" in
    --dry-run) dry_run=1 ;;
    "") ;;
    *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

# Secret, the user in it, and whether CloudNativePG reads it.
secrets=(
    "db-acme acme cnpg"                              # the schema's owner: migrate only
    "db-acme-app acme_app cnpg"                      # every service
    "broker-acme-migrate acme-migrate -"
    "broker-acme-publisher acme-publisher -"
    "broker-acme-inventory acme-inventory -"
    "broker-acme-payment acme-payment -"
    "broker-acme-notification acme-notification -"
    "broker-acme-operator acme-operator -"           # dlq list|replay, run by a person
    "broker-acme-board acme-board -"                 # the API's board
    "broker-acme-keda acme-keda -"                   # KEDA, reading queue depths
)

password() {
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n'
}

if (( ! dry_run )) && ! kubectl get namespace "$namespace" >/dev/null 2>&1; then
    kubectl create namespace "$namespace"
fi
for entry in "${secrets[@]}"; do
    read -r name user reader <<<"$entry"
    if (( ! dry_run )) && kubectl --namespace "$namespace" get secret "$name" >/dev/null 2>&1; then
        echo "secret/$name exists: kept"
        continue
    fi
    # The password through a file descriptor, not the command line that `ps` shows.
    manifest=$(kubectl create secret generic "$name" --namespace "$namespace" \
        --type kubernetes.io/basic-auth --from-literal=username="$user" \
        --from-file=password=<(password) --dry-run=client -o yaml)
    if [ "$reader" = cnpg ]; then
        manifest=$(kubectl label --local -f - cnpg.io/reload=true -o yaml <<<"$manifest")
    fi
    if (( dry_run )); then
        printf -- '---\n%s\n' "$manifest"
    else
        kubectl apply -f - <<<"$manifest"
    fi
done
