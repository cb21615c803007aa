#!/usr/bin/env bash
# Installs the servers that tidesync's integration tests start (crates/testkit) from the
# Debian/Ubuntu archive, without leaving any of them running as a system service: the tests
# start private instances on random ports and need none.
#
# Idempotent and quick: when every program is already present it only checks and exits.
# Usage: .ci/install-servers.sh   (as root, or with sudo available)
set -euo pipefail

# package -> programs it must provide (globs allowed: PostgreSQL's binaries are versioned).
declare -A PROGRAMS=(
    [postgresql]="/usr/lib/postgresql/*/bin/postgres /usr/lib/postgresql/*/bin/initdb /usr/lib/postgresql/*/bin/psql"
    [mariadb-server]="/usr/sbin/mariadbd /usr/bin/mariadb-install-db"
    [mariadb-client]="/usr/bin/mariadb"
    [nats-server]="/usr/sbin/nats-server"
    [redis-server]="/usr/bin/redis-server"
    [rabbitmq-server]="/usr/lib/rabbitmq/bin/rabbitmq-server /usr/lib/rabbitmq/bin/rabbitmqctl /usr/bin/epmd"
    [memcached]="/usr/bin/memcached"
    # The agent's https:// test: a TLS front for the hub, and its certificates.
    [socat]="/usr/bin/socat"
    [openssl]="/usr/bin/openssl"
)
# System services the packages may start, and the processes behind them.
SERVICES=(postgresql mariadb nats-server redis-server rabbitmq-server memcached epmd.socket epmd)
PROCESS_NAMES=(postgres mariadbd mysqld nats-server redis-server beam.smp epmd memcached)

present() {
    local pattern
    for pattern in $1; do
        # Unquoted on purpose: expands the glob; compgen fails when nothing matches.
        compgen -G "$pattern" >/dev/null || return 1
        [[ -x $(compgen -G "$pattern" | head -n 1) ]] || return 1
    done
}

missing_packages() {
    local package
    for package in "${!PROGRAMS[@]}"; do
        present "${PROGRAMS[$package]}" || echo "$package"
    done | sort
}

server_pids() {
    local name
    for name in "${PROCESS_NAMES[@]}"; do
        pgrep -x "$name" || true
    done | sort
}

mapfile -t missing < <(missing_packages)
if ((${#missing[@]} == 0)); then
    echo "install-servers: all servers are installed"
    exit 0
fi

SUDO=()
if ((EUID != 0)); then
    command -v sudo >/dev/null || { echo "install-servers: run as root (missing: ${missing[*]})" >&2; exit 1; }
    SUDO=(sudo)
fi

echo "install-servers: installing ${missing[*]}"

# Keep maintainer scripts from starting services (the standard Debian mechanism), unless the
# machine already has a policy of its own.
policy=/usr/sbin/policy-rc.d
own_policy=false
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 0755 "$policy"
    own_policy=true
fi
remove_policy() { if $own_policy; then "${SUDO[@]}" rm -f "$policy"; fi; }
trap remove_policy EXIT

pids_before=$(server_pids)
"${SUDO[@]}" apt-get update
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}"

# Stop whatever the installation started anyway (e.g. policy-rc.d ignored, socket activation).
if [[ -d /run/systemd/system ]]; then
    for service in "${SERVICES[@]}"; do
        if systemctl is-active --quiet "$service"; then
            echo "install-servers: stopping and disabling system service $service"
            "${SUDO[@]}" systemctl disable --now "$service" || true
        fi
    done
fi
started=$(comm -13 <(echo "$pids_before") <(server_pids))
for pid in $started; do
    echo "install-servers: stopping $(ps -o comm= -p "$pid" || echo "process") (pid $pid) started by the installation"
    "${SUDO[@]}" kill -TERM "$pid" 2>/dev/null || true
done
for pid in $started; do
    for _ in $(seq 100); do
        [[ -e /proc/$pid ]] || break
        sleep 0.1
    done
    [[ -e /proc/$pid ]] && { "${SUDO[@]}" kill -KILL "$pid" 2>/dev/null || true; }
done

mapfile -t still_missing < <(missing_packages)
if ((${#still_missing[@]} != 0)); then
    echo "install-servers: still missing after installation: ${still_missing[*]}" >&2
    exit 1
fi
echo "install-servers: done"
