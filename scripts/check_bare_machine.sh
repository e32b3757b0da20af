#!/usr/bin/env bash
# The README's two commands on a bare Debian 12, from a clean clone:
#
#   sudo scripts/check_bare_machine.sh [--ref REF]
#
# Builds a Debian 12 root filesystem with debootstrap (minbase plus python3, git and
# ca-certificates: nothing else), boots it as a machine of its own (its own network namespace,
# reaching the internet through NAT but not this machine's PostgreSQL and RabbitMQ, and its own
# hostname, mounts and process tree), clones the repository's committed REF into it (HEAD by
# default; uncommitted changes are not part of the check), and inside, as root:
#   1. runs ./scripts/run.sh until the README's happy-path order (curl POST /orders) is answered
#      201 and reaches "paid", then stops it with SIGTERM and requires a clean exit;
#   2. stops PostgreSQL and RabbitMQ (as a reboot would), runs ./scripts/test.sh, and requires it
#      to start them again and pass.
# Everything it made is removed at the end, however it ends: the machine's processes, mounts,
# network namespace, veth pair and the iptables rules it added; net.ipv4.ip_forward is put back.
# What a crashed run left (named with a pid that is gone) is swept first.
#
# Exit status: 0 passed, 1 failed, 77 skipped (not root, or no apt-get): the reason is printed.
# BARE_CHECK_DEADLINE: seconds for the whole check (default 3000). BARE_CHECK_NET: the first
# three octets of the /30 it uses (default 10.213.83).
set -euo pipefail

SKIPPED=77
ref=HEAD
while [ $# -gt 0 ]; do
    case $1 in
        --ref) ref=${2:?--ref needs a commit}; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" != 0 ]; then
    echo "SKIPPED: the bare-machine check needs root (debootstrap, namespaces, iptables)"
    exit "$SKIPPED"
fi
if ! command -v apt-get >/dev/null; then
    echo "SKIPPED: the bare-machine check needs apt-get (a Debian or Ubuntu host) for debootstrap"
    exit "$SKIPPED"
fi

deadline=${BARE_CHECK_DEADLINE:-3000}
# The whole check under timeout: at the deadline it gets SIGTERM, and cleans up (2 minutes at most).
if [ -z "${BARE_CHECK_UNDER_TIMEOUT:-}" ]; then
    BARE_CHECK_UNDER_TIMEOUT=1 exec timeout --kill-after=120 "$deadline" bash "$0" --ref "$ref"
fi
repo=$(git -C "$(dirname "${BASH_SOURCE[0]}")/.." rev-parse --show-toplevel)
commit=$(git -C "$repo" rev-parse --verify "$ref^{commit}")
net=${BARE_CHECK_NET:-10.213.83}
host_ip=$net.1 machine_ip=$net.2 subnet=$net.0/30
hostname=acme-bare

# Everything this run makes carries its pid, so that a later run can tell what a crashed one left.
id=$$
netns=acme-bare-$id
tag=acme-bare-$id # the comment on each iptables rule it adds
work=/var/tmp/acme-bare-$id
root=$work/root
state=/run/acme-bare-$id # what to put back: survives a crash, not a reboot (nor do sysctls)
cache=/var/cache/acme-orders
mirror=http://deb.debian.org/debian
packages=python3,git,ca-certificates

veth_host() { echo "acmeb${1}h"; } # at most 15 characters: "acmeb" + a pid of up to 7 digits + 1
veth_machine() { echo "acmeb${1}m"; }

started=$SECONDS
timings=()
step() {
    step_name=$1
    step_started=$SECONDS
    echo "==> $1"
}
step_done() {
    local took=$((SECONDS - step_started))
    timings+=("$(printf '%5d s  %s' "$took" "$step_name")")
    echo "    ($took s)"
}
fail() {
    echo "FAILED: $*" >&2
    exit 1
}
# seconds_left AT_MOST: the deadline of a step, at most what the whole check's deadline leaves.
seconds_left() {
    local left=$((deadline - (SECONDS - started)))
    [ "$1" -lt "$left" ] && left=$1
    echo $((left > 1 ? left : 1))
}

install_host_tool() { # COMMAND PACKAGE
    command -v "$1" >/dev/null && return 0
    echo "    installing $2 on this machine (for $1)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; } \
        || fail "could not install $2 on this machine"
}

# --- Tearing down: the same code for this run's end and for what a crashed run left ----------

# delete_tagged_rules TAG: exactly the iptables rules carrying the comment TAG, and no others
# (dockerd, say, adds chains and rules of its own while a check runs).
delete_tagged_rules() {
    local table line rule
    for table in filter nat; do
        while read -r line; do
            read -ra rule <<<"${line#-A }"
            iptables -t "$table" -D "${rule[@]//\"/}" || echo "could not delete: $line" >&2
        done < <(iptables-save -t "$table" | grep -E -- "--comment \"?$1\"?( |$)" || true)
    done
}

# restore_ip_forward ID: back to what it was when run ID started, if that run changed it. Left on
# if a Docker bridge appeared meanwhile: dockerd turned it on at its start and needs it.
restore_ip_forward() {
    local saved=/run/acme-bare-$1/ip_forward
    [ -f "$saved" ] || return 0
    if [ "$(cat "$saved")" = 0 ] && [ "$(sysctl -n net.ipv4.ip_forward)" = 1 ]; then
        if [ ! -f "/run/acme-bare-$1/docker0" ] && ip link show docker0 >/dev/null 2>&1; then
            echo "    leaving net.ipv4.ip_forward=1: dockerd started during the check and needs it"
        else
            sysctl -qw net.ipv4.ip_forward=0
        fi
    fi
}

# remove_tree DIR: only once nothing is mounted under it (the machine's mounts live in its own
# mount namespace and die with it; this makes sure before deleting anything).
remove_tree() {
    [ -e "$1" ] || return 0
    if awk -v dir="$1/" 'index($5 "/", dir) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
        echo "not removing $1: something is still mounted under it" >&2
        return 1
    fi
    rm -rf --one-file-system "$1"
}

tear_down() { # ID
    local ns=acme-bare-$1 pids _
    if ip netns list | grep -q "^$ns\b"; then
        # Killing the machine's init kills its whole PID namespace; the rest in the network
        # namespace (curl, nsenter) are killed by their pids.
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            pids=$(ip netns pids "$ns")
            [ -n "$pids" ] || break
            # shellcheck disable=SC2086 # a list of pids
            kill -KILL $pids 2>/dev/null || true
            sleep 0.5
        done
        ip netns delete "$ns"
    fi
    ip link delete "$(veth_host "$1")" 2>/dev/null || true
    delete_tagged_rules "acme-bare-$1"
    restore_ip_forward "$1"
    remove_tree "/var/tmp/acme-bare-$1"
    remove_tree "$cache/build-$1"
    rm -f "$cache"/*.tmp-"$1"
    rm -rf "/run/acme-bare-$1"
}

# The ids of earlier runs that left something behind and whose process is gone.
abandoned_ids() {
    {
        ip netns list | sed -n 's/^acme-bare-\([0-9]\{1,\}\)\b.*/\1/p'
        ip -o link show | sed -n 's/^[0-9]*: acmeb\([0-9]\{1,\}\)h[@:].*/\1/p'
        iptables-save | sed -n 's/.*--comment "\{0,1\}acme-bare-\([0-9]\{1,\}\)\b.*/\1/p'
        find /var/tmp /run -maxdepth 1 -regex '.*/acme-bare-[0-9]+' -printf '%f\n'
        find "$cache" -maxdepth 1 -regex '.*/\(build-\|.*\.tmp-\)[0-9]+' -printf '%f\n'
    } | grep -o '[0-9]*$' | sort -un | while read -r other; do
        if [ "$other" != "$id" ] && ! kill -0 "$other" 2>/dev/null; then echo "$other"; fi
    done
}

cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM ERR
    echo "==> cleaning up"
    local cleanup_started=$SECONDS
    tear_down "$id"
    # Our own background jobs (nsenter, unshare, tee) are gone with the namespace; reap them.
    wait 2>/dev/null
    if iptables-save | grep -q -- "--comment \"\{0,1\}$tag\b" || ip netns list | grep -q "^$netns\b"; then
        echo "FAILED: the cleanup left rules or the namespace behind" >&2
        status=1
    fi
    echo "    ($((SECONDS - cleanup_started)) s)"
    if [ "${#timings[@]}" -gt 0 ]; then
        echo "==> durations"
        printf '%s\n' "${timings[@]}"
        printf '%5d s  in all\n' $((SECONDS - started))
    fi
    [ "$status" = 0 ] && echo "PASSED: the bare-machine check, $commit, in $((SECONDS - started)) s"
    exit "$status"
}

# --- The check --------------------------------------------------------------------------------

step "host tools, lock, leftovers of crashed runs"
for tool in debootstrap:debootstrap iptables:iptables ip:iproute2 curl:curl unshare:util-linux; do
    install_host_tool "${tool%%:*}" "${tool#*:}"
done
mkdir -p /run/lock "$cache"
exec 9>/run/lock/acme-bare-machine.lock
flock -w 120 9 || fail "another bare-machine check has held /run/lock/acme-bare-machine.lock for 2 minutes"
for other in $(abandoned_ids); do
    echo "    removing what the check with pid $other left"
    tear_down "$other"
done
trap cleanup EXIT
# set -e stops at a failing command; say which.
trap 'echo "FAILED: line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'echo "FAILED: interrupted (SIGINT)" >&2; exit 130' INT
trap 'echo "FAILED: SIGTERM (the check'"'"'s deadline of $deadline s, or someone stopped it)" >&2; exit 143' TERM
if ip route show | grep -q "^$net\."; then
    fail "$subnet is in use on this machine: set BARE_CHECK_NET to three other octets"
fi
step_done

step "root filesystem: debootstrap --variant=minbase bookworm + $packages"
# A pristine copy for every run, from a tarball of debootstrap's result, cached by what went into
# it; a month-old one is made again (a point release moves the packages).
key=$(echo "bookworm minbase $packages $mirror $(dpkg --print-architecture)" | sha256sum | cut -c1-16)
tarball=$cache/bare-rootfs-$key.tar
find "$cache" -maxdepth 1 -name 'bare-rootfs-*.tar' -mtime +30 -delete
mkdir -p "$work" "$state"
if [ ! -s "$tarball" ]; then
    echo "    no cached root filesystem: debootstrap (about a minute)"
    # In a mount namespace of its own: the /proc and /sys it mounts in the target never reach
    # this machine's mount table, even if it is killed half-way.
    timeout "$(seconds_left 900)" unshare --mount --propagation private \
        debootstrap --variant=minbase --include="$packages" bookworm "$cache/build-$id" "$mirror" \
        >"$work/debootstrap.log" 2>&1 &
    wait $! || { tail -n 30 "$work/debootstrap.log"; fail "debootstrap failed"; }
    chroot "$cache/build-$id" apt-get clean
    tar -C "$cache/build-$id" --numeric-owner -cf "$tarball.tmp-$id" .
    mv "$tarball.tmp-$id" "$tarball"
    remove_tree "$cache/build-$id"
else
    echo "    from the cache: $tarball"
fi
mkdir "$root"
tar -C "$root" --numeric-owner -xpf "$tarball"
step_done

step "machine: network namespace $netns, $machine_ip behind NAT, hostname $hostname"
# Written before anything is changed, so that a crashed run can be undone by the next one.
sysctl -n net.ipv4.ip_forward >"$state/ip_forward"
if ip link show docker0 >/dev/null 2>&1; then touch "$state/docker0"; fi
iptables-save >"$state/iptables-before" # for whoever investigates; never restored wholesale
ip netns add "$netns"
ip link add "$(veth_host "$id")" type veth peer name "$(veth_machine "$id")"
ip link set "$(veth_machine "$id")" netns "$netns"
ip addr add "$host_ip/30" dev "$(veth_host "$id")"
# No IPv6 on this side: the machine would reach this one by its link-local address.
sysctl -qw "net.ipv6.conf.$(veth_host "$id").disable_ipv6=1"
ip link set "$(veth_host "$id")" up
ip netns exec "$netns" sh -c "
    ip link set lo up
    ip addr add $machine_ip/30 dev $(veth_machine "$id")
    ip link set $(veth_machine "$id") up
    ip route add default via $host_ip"
iptables -t nat -A POSTROUTING -s "$subnet" -m comment --comment "$tag" -j MASQUERADE
iptables -I FORWARD 1 -i "$(veth_host "$id")" -m comment --comment "$tag" -j ACCEPT
iptables -I FORWARD 1 -o "$(veth_host "$id")" -m conntrack --ctstate RELATED,ESTABLISHED \
    -m comment --comment "$tag" -j ACCEPT
# Nothing on this machine itself is reachable from the bare one, whatever address it listens on,
# nor through a port that dockerd publishes (DNAT) for its containers.
iptables -I INPUT 1 -i "$(veth_host "$id")" -m comment --comment "$tag" -j REJECT
iptables -I FORWARD 1 -i "$(veth_host "$id")" -m conntrack --ctstate DNAT \
    -m comment --comment "$tag" -j REJECT
[ "$(cat "$state/ip_forward")" = 1 ] || sysctl -qw net.ipv4.ip_forward=1

echo "$hostname" >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
    "$hostname" >"$root/etc/hosts"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
machine_env=(HOME=/root USER=root LOGNAME=root SHELL=/bin/bash
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    # Inside, the compose test (no Docker there) and this check itself do not run, nor the
    # cluster suite (it starts three RabbitMQ nodes and a PostgreSQL pair of its own) or the fault
    # suites (deployments under load, killed and cut): the same CI run has just run them on this
    # machine, and inside they would double the check's time.
    TEST_COMPOSE=0 TEST_BARE_MACHINE=0 TEST_CLUSTER=0 TEST_FAULTS=0)
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
    # This network reaches PyPI only through its own CA: the machine gets the bundle this machine
    # uses. It stands for a normal machine's working TLS (pip-audit goes through requests).
    cp "$PIP_CERT" "$root/etc/ssl/certs/network-ca-bundle.pem"
    machine_env+=(PIP_CERT=/etc/ssl/certs/network-ca-bundle.pem
        REQUESTS_CA_BUNDLE=/etc/ssl/certs/network-ca-bundle.pem)
fi

# The machine's init: its own hostname and mounts, then, chrooted, a shell that reaps orphans
# (daemons started inside are reparented to it) and ignores every signal but SIGKILL.
# setpriv --pdeathsig and unshare --kill-child: if this script dies, so does the machine.
# shellcheck disable=SC2016 # expanded by the machine's shell
machine_init='set -e
hostname "$2"
mount -t proc proc "$1/proc"
mount -t sysfs sysfs "$1/sys"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$1/dev/pts"
mount --bind "$1/dev/pts/ptmx" "$1/dev/ptmx"
mount -t tmpfs -o mode=1777 tmpfs "$1/dev/shm"
exec chroot "$1" /bin/bash -c "trap \"\" TERM INT HUP; while :; do sleep 3600 & wait; done"'
setpriv --pdeathsig KILL -- ip netns exec "$netns" \
    unshare --uts --mount --pid --fork --kill-child -- bash -c "$machine_init" init "$root" "$hostname" \
    9>&- &
unshare_pid=$!
disown "$unshare_pid" # killed with the machine: no "Killed" from the shell then
machine=""
for _ in $(seq 100); do
    machine=$(cat "/proc/$unshare_pid/task/$unshare_pid/children" 2>/dev/null || true)
    machine=${machine%% *}
    [ -n "$machine" ] && [ "$(readlink "/proc/$machine/root" 2>/dev/null)" = "$root" ] && break
    machine=""
    sleep 0.1
done
[ -n "$machine" ] || fail "the machine did not start"
# "${in_machine[@]}" COMMAND_LINE: bash runs it in the machine as root, with a bare login's
# environment (and without the lock's descriptor: call it with 9>&-).
in_machine=(nsenter --target "$machine" --mount --uts --net --pid --root --wd --
    /usr/bin/env -i "${machine_env[@]}" /bin/bash -c)

ip netns exec "$netns" curl -sS -o /dev/null --noproxy '*' -m 30 "$mirror/dists/bookworm/Release" \
    || fail "the machine cannot reach $mirror through NAT (with this machine's resolv.conf:" \
        "$(grep -m1 '^nameserver' /etc/resolv.conf))"
# The point of the namespace: this machine's servers answer on 127.0.0.1, the bare one's do not.
for port in 5432 5672; do
    if ip netns exec "$netns" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null \
        || ip netns exec "$netns" bash -c "exec 3<>/dev/tcp/$host_ip/$port" 2>/dev/null; then
        fail "something answers on port $port inside the machine before anything was installed"
    fi
done
echo "    reaches $mirror; nothing answers on 5432 or 5672 (this machine's servers are not seen)"
step_done

step "clone $commit into the machine"
git clone --quiet --no-checkout --no-hardlinks "$repo" "$root/root/acme-orders"
if ! git -C "$root/root/acme-orders" cat-file -e "$commit" 2>/dev/null; then
    git -C "$root/root/acme-orders" fetch --quiet "$repo" "$ref"
fi
git -C "$root/root/acme-orders" checkout --quiet -B bare-check "$commit"
step_done

api=http://localhost:8000
step "./scripts/run.sh, until the happy-path order is answered 201"
"${in_machine[@]}" 'cd /root/acme-orders && exec ./scripts/run.sh' </dev/null 9>&- \
    > >(tee "$work/run.log" | sed -u 's/^/    run.sh | /') 2>&1 &
run_pid=$!
until_201=$((SECONDS + $(seconds_left 1200)))
while :; do
    kill -0 "$run_pid" 2>/dev/null || { wait "$run_pid" || true; fail "run.sh exited before the API answered"; }
    code=$(ip netns exec "$netns" curl -s --noproxy '*' -m 10 -o "$work/order.json" -w '%{http_code}' \
        -X POST "$api/orders" -H "Content-Type: application/json" \
        -d '{"customer_id":"C100","email":"c100@example.com","items":[{"sku":"TSHIRT-BLK-M","qty":1}]}' \
        || true)
    [ "$code" = 201 ] && break
    [ "$SECONDS" -lt "$until_201" ] || fail "no 201 from POST /orders within the deadline (last: ${code:-none})"
    sleep 2
done
order=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["id"])' "$work/order.json")
echo "    201 Created: order $order"
step_done

step "GET /orders/$order until it is paid"
until_paid=$((SECONDS + $(seconds_left 60)))
until [ "$(ip netns exec "$netns" curl -s --noproxy '*' -m 10 "$api/orders/$order" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])' 2>/dev/null)" = paid ]; do
    [ "$SECONDS" -lt "$until_paid" ] || fail "order $order did not reach paid within 60 s"
    sleep 1
done
echo "    \"status\": \"paid\""
step_done

step "SIGTERM to run.sh: a clean exit"
# run.sh, which exec'd acme-orders run all, is the child of nsenter's that is in the machine's PID
# namespace (the other one is the shell feeding tee).
# (read fails at the end of the line, which has no newline, having read it.)
read -ra children <"/proc/$run_pid/task/$run_pid/children" || true
for child in "${children[@]}"; do
    if [ "$(readlink "/proc/$child/ns/pid")" = "$(readlink "/proc/$machine/ns/pid")" ]; then
        kill -TERM "$child"
    fi
done
until_stopped=$((SECONDS + $(seconds_left 60)))
while kill -0 "$run_pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$until_stopped" ] || fail "run.sh did not stop within 60 s of SIGTERM"
    sleep 0.5
done
wait "$run_pid" && run_status=0 || run_status=$?
[ "$run_status" = 0 ] || fail "run.sh exited with status $run_status after SIGTERM"
for pid in $(ip netns pids "$netns"); do
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q acme.orders; then
        fail "a service outlived run.sh: $(tr '\0' ' ' <"/proc/$pid/cmdline")"
    fi
done
echo "    exit status 0, no service left running"
step_done

step "PostgreSQL and RabbitMQ stopped, as by a reboot"
# So that test.sh finds them installed (by run.sh) but down, and has to start them again.
# shellcheck disable=SC2016 # expanded in the machine
"${in_machine[@]}" 'pg_lsclusters --no-header | while read -r version name _; do
        pg_ctlcluster "$version" "$name" stop; done && rabbitmqctl -q stop' </dev/null 9>&-
step_done

step "./scripts/test.sh"
# The whole suite but the parts turned off above, its first setup included: 437 s on 2026-12-01,
# with room to spare for a slower machine.
timeout --kill-after=10 "$(seconds_left 2400)" "${in_machine[@]}" 'cd /root/acme-orders && ./scripts/test.sh' \
    </dev/null 9>&- > >(tee "$work/test.log" | sed -u 's/^/    test.sh | /') 2>&1 &
wait $! && test_status=0 || test_status=$?
[ "$test_status" = 0 ] || fail "test.sh exited with status $test_status"
for server in PostgreSQL RabbitMQ; do
    grep -q "^==> starting $server" "$work/test.log" || fail "test.sh did not start $server again"
done
echo "    $(grep -E '^=+ .*(passed|failed).* =+$' "$work/test.log" | tail -n 1)"
step_done
