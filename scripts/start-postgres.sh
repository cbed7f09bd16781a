#!/usr/bin/env bash
# Start a throwaway PostgreSQL 15 + pgvector 0.8.0 server for tests, CI and local development.
#
# Idempotent: installs only what is missing, reuses a running server. Prints the DSN on stdout (the last line)
# and writes it to $PGDATA_DIR/dsn, so callers can do:
#   export EMBEDSMITH_TEST_PG="$(scripts/start-postgres.sh | tail -n 1)"
# Needs root (or sudo) on Debian bookworm. Environment overrides:
#   EMBEDSMITH_PG_DIR   data + state directory (default /var/tmp/embedsmith-pg)
#   EMBEDSMITH_PG_PORT  port on 127.0.0.1 (default: a spare one, remembered across runs)
set -euo pipefail

PG_VERSION=15
PGVECTOR_VERSION=0.8.0-1
PG_BIN=/usr/lib/postgresql/$PG_VERSION/bin
PG_CONFIG=$PG_BIN/pg_config
STATE=${EMBEDSMITH_PG_DIR:-/var/tmp/embedsmith-pg}
DATA=$STATE/data
DB=embedsmith
USER_NAME=embedsmith

log() { echo "start-postgres: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }

install_postgres() {
    if [ -x "$PG_BIN/postgres" ] && [ -x "$PG_CONFIG" ] && [ -d "/usr/include/postgresql/$PG_VERSION/server" ]; then
        return
    fi
    log "installing postgresql-$PG_VERSION and build tools"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq >&2
    as_root apt-get install -y -qq --no-install-recommends \
        "postgresql-$PG_VERSION" "postgresql-server-dev-$PG_VERSION" build-essential dpkg-dev >&2
}

install_pgvector() {
    local libdir sharedir
    libdir=$("$PG_CONFIG" --pkglibdir)
    sharedir=$("$PG_CONFIG" --sharedir)
    if [ -f "$libdir/vector.so" ] && [ -f "$sharedir/extension/vector--0.8.0.sql" ]; then
        return
    fi
    log "building pgvector $PGVECTOR_VERSION from Debian trixie's source package"
    # A private apt configuration so the system's sources are left untouched.
    local apt_dir build
    apt_dir=$(mktemp -d)
    build=$(mktemp -d)
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/sources.list.d"
    cat >"$apt_dir/sources.list" <<SRC
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
SRC
    local opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
        -o "Dir::State::Lists=$apt_dir/lists" -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root")
    apt-get "${opts[@]}" update -qq >&2
    (cd "$build" && apt-get "${opts[@]}" source --download-only "pgvector=$PGVECTOR_VERSION" >&2 \
        && dpkg-source -x pgvector_*.dsc src >&2 \
        && make -C src -s -j"$(nproc)" PG_CONFIG="$PG_CONFIG" OPTFLAGS="" >&2 \
        && as_root make -C src -s install PG_CONFIG="$PG_CONFIG" >&2)
    rm -rf "$apt_dir" "$build"
}

spare_port() {
    python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

start_server() {
    as_root mkdir -p "$STATE"
    as_root chown postgres:postgres "$STATE"
    if [ ! -f "$DATA/PG_VERSION" ]; then
        log "initdb in $DATA"
        as_pg "$PG_BIN/initdb" -D "$DATA" -A trust -U postgres -E UTF8 --no-locale >/dev/null
    fi
    local port
    if [ -f "$STATE/port" ]; then port=$(cat "$STATE/port"); else port=${EMBEDSMITH_PG_PORT:-$(spare_port)}; fi
    if as_pg "$PG_BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        :
    else
        # The remembered port may have been taken while the server was down.
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            port=${EMBEDSMITH_PG_PORT:-$(spare_port)}
        fi
        log "starting server on 127.0.0.1:$port"
        as_pg "$PG_BIN/pg_ctl" -D "$DATA" -l "$STATE/server.log" -w -t 60 start \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $STATE -c max_connections=200 -c fsync=on" >/dev/null
        echo "$port" | as_root tee "$STATE/port" >/dev/null
    fi
    local psql=("$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -X -q -v ON_ERROR_STOP=1)
    if [ "$("${psql[@]}" -tAc "SELECT 1 FROM pg_roles WHERE rolname='$USER_NAME'")" != 1 ]; then
        "${psql[@]}" -c "CREATE ROLE $USER_NAME LOGIN SUPERUSER" >&2
    fi
    if [ "$("${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'")" != 1 ]; then
        "${psql[@]}" -c "CREATE DATABASE $DB OWNER $USER_NAME" >&2
    fi
    "${psql[@]}" -d "$DB" -c "SET client_min_messages = warning" -c "CREATE EXTENSION IF NOT EXISTS vector" >&2
    local dsn="postgresql://$USER_NAME@127.0.0.1:$port/$DB"
    echo "$dsn" | as_root tee "$STATE/dsn" >/dev/null
    echo "$dsn"
}

install_postgres
install_pgvector
start_server
