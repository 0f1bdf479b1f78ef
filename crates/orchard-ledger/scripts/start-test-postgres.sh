#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server for orchard-ledger's PostgreSQL tests and prints the URL to
# put in ORCHARD_TEST_POSTGRES_URL (the only thing written to stdout; progress goes to stderr).
# Idempotent: installs PostgreSQL with apt-get if missing, reuses a cluster that is already set up
# and running. Usage (CI):
#   export ORCHARD_TEST_POSTGRES_URL="$(bash crates/orchard-ledger/scripts/start-test-postgres.sh)"
#   cargo test -p orchard-ledger -- --include-ignored
# Environment: ORCHARD_PG_DIR (default /tmp/orchard-test-pg), ORCHARD_PG_PORT (default 54329).
set -euo pipefail

DIR="${ORCHARD_PG_DIR:-/tmp/orchard-test-pg}"
PORT="${ORCHARD_PG_PORT:-54329}"
DB=orchard_test
log() { echo "start-test-postgres: $*" >&2; }

find_bin() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
    done
    if command -v pg_ctl >/dev/null 2>&1; then dirname "$(command -v pg_ctl)"; return 0; fi
    return 1
}

BIN="$(find_bin || true)"
if [ -z "$BIN" ]; then
    log "PostgreSQL not found; installing with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    BIN="$(find_bin)"
fi

# initdb and postgres refuse to run as root: use the postgres account when we are root.
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$DIR" postgres
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

mkdir -p "$DIR"
if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; fi
if [ ! -f "$DIR/data/PG_VERSION" ]; then
    log "initialising a cluster in $DIR/data"
    as_pg "$BIN/initdb" -D "$DIR/data" -U postgres -A trust -E UTF8 --no-locale >&2
fi

if ! as_pg "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
    log "starting PostgreSQL on 127.0.0.1:$PORT"
    as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
        -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=on" start >&2
fi

for _ in $(seq 1 60); do
    "$BIN/pg_isready" -h 127.0.0.1 -p "$PORT" -q && break
    sleep 0.5
done
"$BIN/pg_isready" -h 127.0.0.1 -p "$PORT" >&2

if [ "$("$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB"
fi

echo "postgres://postgres@127.0.0.1:$PORT/$DB"
