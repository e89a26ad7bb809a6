#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests, benchmarks and `make serve-pg`.
#
#   scripts/postgres.sh start [DIR]   install the server if missing, create a cluster in DIR
#                                     (default: a new temp dir) on a free port, start it, and
#                                     print `export` lines for SESSIOND_PG_DIR and
#                                     SESSIOND_TEST_POSTGRES_URL (eval them)
#   scripts/postgres.sh env [DIR]     print the same lines again
#   scripts/postgres.sh stop [DIR]    stop the cluster and remove DIR
#
# DIR defaults to $SESSIOND_PG_DIR for env and stop. SESSIOND_PG_FAST=1 turns off fsync
# (tests: the sessiond process is what gets killed, not PostgreSQL); benchmarks keep it on.
# Runs the server as the `postgres` system user when started as root (initdb refuses root),
# as the current user otherwise. Authentication is `trust` on 127.0.0.1 only.
set -euo pipefail

command=${1:-}
dir=${2:-${SESSIOND_PG_DIR:-}}

log() { printf 'postgres.sh: %s\n' "$*" >&2; }

find_bindir() {
    local candidate
    for candidate in "${SESSIOND_PG_BINDIR:-}" $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r) \
        /usr/local/bin /usr/bin; do
        if [ -n "$candidate" ] && [ -x "$candidate/initdb" ] && [ -x "$candidate/pg_ctl" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

install_server() {
    if [ "$(id -u)" -ne 0 ]; then
        log "no PostgreSQL server found and not root: install the 'postgresql' package"
        return 1
    fi
    log "installing the PostgreSQL server (apt-get)"
    # Debian's package would create and start a cluster of its own: we want none.
    mkdir -p /etc/postgresql-common
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold \
        postgresql >&2
}

# as_owner CMD...: run CMD as the user that owns the cluster.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

port_is_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
    local bindir port attempt options
    bindir=$(find_bindir) || { install_server && bindir=$(find_bindir); } || {
        log "cannot find initdb/pg_ctl after installing"
        return 1
    }
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
    fi
    if [ -z "$dir" ]; then
        dir=$(mktemp -d "${TMPDIR:-/tmp}/sessiond-pg.XXXXXX")
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres "$dir"
        chmod 0755 "$dir"
    fi
    # Collation C (ids compare byte-wise, as in SQLite); character type C.UTF-8, so that
    # keyword search folds the case of every script, not of ASCII only.
    as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 \
        --locale=C --lc-ctype=C.UTF-8 -N >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; return 1; }
    options="-c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c max_connections=300"
    if [ "${SESSIOND_PG_FAST:-0}" = 1 ]; then
        options="$options -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    fi
    for attempt in 1 2 3 4 5; do
        port=$(( 20000 + RANDOM % 40000 ))
        port_is_free "$port" || continue
        if as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 30 \
            -o "-p $port $options" start >/dev/null 2>&1; then
            {
                echo "export SESSIOND_PG_DIR=$dir"
                echo "export SESSIOND_PG_BINDIR=$bindir"
                echo "export SESSIOND_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:$port/postgres"
            } > "$dir/env"
            cat "$dir/env"
            return 0
        fi
        log "start on port $port failed (attempt $attempt)"
    done
    tail -n 20 "$dir/postgres.log" >&2 || true
    return 1
}

stop() {
    local bindir
    if [ -z "$dir" ] || [ ! -d "$dir/data" ]; then
        log "no cluster to stop (give DIR or set SESSIOND_PG_DIR)"
        return 0
    fi
    bindir=$(find_bindir)
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}

case "$command" in
    start) start ;;
    stop) stop ;;
    env)
        [ -n "$dir" ] && [ -f "$dir/env" ] || { log "no cluster at '${dir}'"; exit 1; }
        cat "$dir/env"
        ;;
    *)
        echo "usage: $0 start [DIR] | env [DIR] | stop [DIR]" >&2
        exit 2
        ;;
esac
