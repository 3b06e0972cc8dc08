#!/usr/bin/env bash
# Real servers for tests and local development, without Docker.
#
#   scripts/services.sh up     [SERVICE...]   install what is missing, start what is not running
#   scripts/services.sh down   [SERVICE...]   stop what `up` started (by pid)
#   scripts/services.sh status [SERVICE...]   what runs, with versions
#   scripts/services.sh env                   `export` lines for the tests (eval "$(... env)")
#
# SERVICE is one of: cassandra cassandra8 postgres clickhouse toxiproxy (default: all).
#   cassandra   Apache Cassandra 5.0 single node, commitlog version 7 (storage_compatibility_mode
#               CASSANDRA_4, the 5.0 default)
#   cassandra8  a second single node (own cluster, own ports/dirs), commitlog version 8
#               (storage_compatibility_mode NONE)
#   postgres    PostgreSQL 15 private cluster with TimescaleDB (Apache-2 build) and TLS
#   clickhouse  Debian's clickhouse-server with a private config (HTTP, HTTPS, native TCP)
#   toxiproxy   Shopify toxiproxy with proxies in front of PostgreSQL, ClickHouse HTTP and CQL
#
# Everything listens on 127.0.0.1 only. Downloads and builds are cached in
# CDC_SERVICES_CACHE (default ~/.cache/cdc-services); data, pids and logs live in
# CDC_SERVICES_STATE (default ~/.local/state/cdc-services). Both are outside the repo, so a
# second `up` on the same machine takes seconds. Progress goes to stderr; `env` prints to stdout.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_DIR=${CDC_SERVICES_CACHE:-$HOME/.cache/cdc-services}
STATE_DIR=${CDC_SERVICES_STATE:-$HOME/.local/state/cdc-services}

# ---- versions ----------------------------------------------------------------------------
CASSANDRA_VERSION=${CDC_CASSANDRA_VERSION:-5.0.9}
TIMESCALEDB_DEB_VERSION=${CDC_TIMESCALEDB_DEB_VERSION:-2.19.3+dfsg-1+deb13u1}
TIMESCALEDB_VERSION=${TIMESCALEDB_DEB_VERSION%%+*}        # 2.19.3
TOXIPROXY_VERSION=${CDC_TOXIPROXY_VERSION:-v2.12.0}
PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin

# ---- addresses and ports (all overridable) -----------------------------------------------
HOST=127.0.0.1
CASSANDRA_PORT=${CDC_CASSANDRA_PORT:-19042}
CASSANDRA_STORAGE_PORT=${CDC_CASSANDRA_STORAGE_PORT:-17000}
CASSANDRA8_PORT=${CDC_CASSANDRA8_PORT:-19043}
CASSANDRA8_STORAGE_PORT=${CDC_CASSANDRA8_STORAGE_PORT:-17010}
CASSANDRA_HEAP=${CDC_CASSANDRA_HEAP:-512M}
CASSANDRA_CDC_TOTAL_SPACE=${CDC_CASSANDRA_CDC_TOTAL_SPACE:-64MiB}
CASSANDRA_SEGMENT_SIZE=${CDC_CASSANDRA_SEGMENT_SIZE:-2MiB}  # 32 segments fit in cdc_total_space: a test run closes several
CASSANDRA_SYNC_PERIOD=${CDC_CASSANDRA_SYNC_PERIOD:-100ms}
PG_PORT=${CDC_POSTGRES_PORT:-15432}
CH_HTTP_PORT=${CDC_CLICKHOUSE_HTTP_PORT:-18123}
CH_HTTPS_PORT=${CDC_CLICKHOUSE_HTTPS_PORT:-18443}
CH_TCP_PORT=${CDC_CLICKHOUSE_TCP_PORT:-19000}
CH_INTERSERVER_PORT=${CDC_CLICKHOUSE_INTERSERVER_PORT:-19009}
TOXIPROXY_PORT=${CDC_TOXIPROXY_PORT:-18474}
PROXY_PG_PORT=${CDC_PROXY_POSTGRES_PORT:-25432}
PROXY_CH_PORT=${CDC_PROXY_CLICKHOUSE_PORT:-28123}
PROXY_CASSANDRA_PORT=${CDC_PROXY_CASSANDRA_PORT:-29042}
PROXY_CASSANDRA8_PORT=${CDC_PROXY_CASSANDRA8_PORT:-29043}

# Test-only credentials for servers that listen on loopback only.
DB_USER=${CDC_SERVICES_USER:-cdc}
DB_PASSWORD=${CDC_SERVICES_PASSWORD:-cdc_test_password}

ALL_SERVICES=(cassandra cassandra8 postgres clickhouse toxiproxy)

# ---- output helpers ----------------------------------------------------------------------
T0=$(date +%s.%N)
log() { printf '[services %6.1fs] %s\n' "$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
tail_log() { # file
  if [[ -f $1 ]]; then
    printf -- '---- last lines of %s ----\n' "$1" >&2
    tail -n 40 "$1" >&2 || true
    printf -- '---- end of %s ----\n' "$1" >&2
  else
    log "(no log file $1)"
  fi
}

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# ---- apt ---------------------------------------------------------------------------------
APT_UPDATED=0
apt_update_once() {
  if [[ $APT_UPDATED -eq 0 ]]; then
    log "apt-get update"
    as_root apt-get update -qq >/dev/null || die "apt-get update failed"
    APT_UPDATED=1
  fi
}
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
ensure_packages() { # pkg...
  local missing=() p
  for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  apt_update_once
  local t
  t=$(date +%s)
  log "apt-get install ${missing[*]}"
  mkdir -p "$STATE_DIR"
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >"$STATE_DIR/apt.log" 2>&1; then
    tail_log "$STATE_DIR/apt.log"
    die "apt-get install ${missing[*]} failed"
  fi
  log "apt-get install done ($(($(date +%s) - t))s)"
}

# ---- process helpers ---------------------------------------------------------------------
port_open() { # port
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}
pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }
# read_pid <pidfile>: the pid in it, if that process is alive and is ours (its command line names
# the pidfile's directory); empty otherwise, so a reused pid is never taken for our server.
read_pid() {
  local pid
  [[ -f $1 ]] || return 0
  pid=$(tr -d ' \n' <"$1")
  if [[ -n $pid && -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$(dirname "$1")/"; then
    echo "$pid"
  fi
  return 0
}

# running <pidfile> <port>: our process is alive and its port answers
running() { local pid; pid=$(read_pid "$1"); pid_alive "$pid" && port_open "$2"; }

# wait_port <name> <pidfile> <port> <timeout-seconds> <logfile>
wait_port() {
  local name=$1 pidfile=$2 port=$3 timeout=$4 logfile=$5 start pid
  start=$(date +%s)
  while true; do
    pid=$(tr -d ' \n' <"$pidfile" 2>/dev/null || true) # just started by us: no cmdline check
    if ! pid_alive "$pid"; then
      log "$name exited during startup"
      tail_log "$logfile"
      return 1
    fi
    port_open "$port" && return 0
    if (($(date +%s) - start > timeout)); then
      log "$name did not open port $port within ${timeout}s"
      tail_log "$logfile"
      return 1
    fi
    sleep 0.5
  done
}

# fail early if somebody else holds a port we want
check_port_free() { # name port
  if port_open "$2"; then
    die "$1: port $2 on $HOST is already in use by another process (not started by this script); set the CDC_*_PORT variables to other ports"
  fi
}

# signal_stop <name> <pidfile>: send TERM to a process we started; remember it for wait_stopped
STOPPING=()
signal_stop() {
  local name=$1 pidfile=$2 pid
  pid=$(read_pid "$pidfile")
  if ! pid_alive "$pid"; then
    rm -f "$pidfile"
    log "$name: not running"
    return 0
  fi
  log "$name: stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  STOPPING+=("$name:$pid:$pidfile")
}

# wait_stopped [timeout]: wait for everything signal_stop signalled; KILL what is left
wait_stopped() {
  local timeout=${1:-60} i entry name pid pidfile left
  for ((i = 0; i < timeout * 10; i++)); do
    left=0
    for entry in "${STOPPING[@]}"; do
      pid=$(cut -d: -f2 <<<"$entry")
      pid_alive "$pid" && left=1
    done
    [[ $left -eq 0 ]] && break
    sleep 0.1
  done
  for entry in "${STOPPING[@]}"; do
    IFS=: read -r name pid pidfile <<<"$entry"
    if pid_alive "$pid"; then
      log "$name: still running after ${timeout}s, sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  STOPPING=()
}

# ---- TLS (shared CA for PostgreSQL and ClickHouse) -----------------------------------------
TLS_DIR=$STATE_DIR/tls
ensure_tls() {
  [[ -s $TLS_DIR/ca.crt && -s $TLS_DIR/server.crt && -s $TLS_DIR/server.key ]] && return 0
  command -v openssl >/dev/null || ensure_packages openssl
  log "tls: generating a self-signed CA and server certificate in $TLS_DIR"
  mkdir -p "$TLS_DIR"
  (
    cd "$TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=cdc-services test CA" \
      -keyout ca.key -out ca.crt -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile server.ext -out server.crt 2>/dev/null
    rm -f server.csr server.ext
    chmod 600 ca.key server.key
    chmod 644 ca.crt server.crt
  )
}

# =========================================================================================
# Cassandra
# =========================================================================================
CASSANDRA_LIB=$CACHE_DIR/cassandra/$CASSANDRA_VERSION/lib

ensure_java() {
  if ! command -v java >/dev/null || ! java -version 2>&1 | grep -qE 'version "(1[7-9]|2[0-9])'; then
    ensure_packages openjdk-17-jre-headless
  fi
  command -v mvn >/dev/null || [[ -f $CASSANDRA_LIB/.complete ]] || ensure_packages maven
}

ensure_cassandra_jars() {
  [[ -f $CASSANDRA_LIB/.complete ]] && return 0
  ensure_java
  local work=$CACHE_DIR/cassandra/$CASSANDRA_VERSION t
  t=$(date +%s)
  log "cassandra: resolving org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION and dependencies with Maven"
  mkdir -p "$work"
  rm -rf "$work/lib.tmp"
  cp "$REPO_DIR/services/cassandra/pom.xml" "$work/pom.xml"
  if ! (cd "$work" && mvn -B -q -f pom.xml -Dcassandra.version="$CASSANDRA_VERSION" \
    dependency:copy-dependencies -DoutputDirectory="$work/lib.tmp" >"$work/mvn.log" 2>&1); then
    tail_log "$work/mvn.log"
    die "cassandra: mvn dependency:copy-dependencies failed"
  fi
  rm -rf "$work/target" "$CASSANDRA_LIB"
  mv "$work/lib.tmp" "$CASSANDRA_LIB"
  touch "$CASSANDRA_LIB/.complete"
  log "cassandra: $(ls "$CASSANDRA_LIB"/*.jar | wc -l) jars in $CASSANDRA_LIB ($(($(date +%s) - t))s)"
}

# cassandra_vars <instance>: sets C_* variables for the instance
cassandra_vars() {
  C_NAME=$1
  C_DIR=$STATE_DIR/$1
  C_PIDFILE=$C_DIR/cassandra.pid
  C_LOG=$C_DIR/logs/system.log
  C_OUT=$C_DIR/logs/stdout.log
  case $1 in
    cassandra) C_PORT=$CASSANDRA_PORT C_STORAGE=$CASSANDRA_STORAGE_PORT C_COMPAT=CASSANDRA_4 ;;
    cassandra8) C_PORT=$CASSANDRA8_PORT C_STORAGE=$CASSANDRA8_STORAGE_PORT C_COMPAT=NONE ;;
    *) die "unknown cassandra instance $1" ;;
  esac
}

start_cassandra() { # instance ; starts in the background, does not wait
  cassandra_vars "$1"
  if running "$C_PIDFILE" "$C_PORT"; then
    log "$C_NAME: already running (pid $(read_pid "$C_PIDFILE"), port $C_PORT)"
    return 0
  fi
  local pid
  pid=$(read_pid "$C_PIDFILE")
  if pid_alive "$pid"; then
    log "$C_NAME: pid $pid alive but port $C_PORT not open yet; waiting for it"
    return 0
  fi
  check_port_free "$C_NAME" "$C_PORT"
  check_port_free "$C_NAME (storage)" "$C_STORAGE"
  ensure_cassandra_jars
  mkdir -p "$C_DIR"/{data,commitlog,cdc_raw,saved_caches,hints,logs,triggers}
  # A data directory keeps the storage_compatibility_mode it was created with.
  if [[ -f $C_DIR/compat_mode && $(cat "$C_DIR/compat_mode") != "$C_COMPAT" ]]; then
    die "$C_NAME: $C_DIR was created with storage_compatibility_mode $(cat "$C_DIR/compat_mode"); remove it to change"
  fi
  echo "$C_COMPAT" >"$C_DIR/compat_mode"
  # cdc_total_space is small: segments a previous run of the node left in cdc_raw would count
  # against it forever (nobody consumes them), so a (re)started test node begins with it empty.
  if [[ ${CDC_CASSANDRA_KEEP_CDC_RAW:-0} != 1 ]] && compgen -G "$C_DIR/cdc_raw/*" >/dev/null; then
    log "$C_NAME: emptying $C_DIR/cdc_raw (left by the previous run; CDC_CASSANDRA_KEEP_CDC_RAW=1 keeps it)"
    rm -f "$C_DIR"/cdc_raw/*
  fi
  sed -e "s#@CLUSTER_NAME@#cdc-$C_NAME#g" -e "s#@COMPAT_MODE@#$C_COMPAT#g" \
    -e "s#@DATA_DIR@#$C_DIR#g" -e "s#@LISTEN_ADDRESS@#$HOST#g" \
    -e "s#@STORAGE_PORT@#$C_STORAGE#g" -e "s#@SSL_STORAGE_PORT@#$((C_STORAGE + 1))#g" \
    -e "s#@NATIVE_PORT@#$C_PORT#g" -e "s#@CDC_TOTAL_SPACE@#$CASSANDRA_CDC_TOTAL_SPACE#g" \
    -e "s#@COMMITLOG_SEGMENT_SIZE@#$CASSANDRA_SEGMENT_SIZE#g" \
    -e "s#@COMMITLOG_SYNC_PERIOD@#$CASSANDRA_SYNC_PERIOD#g" \
    "$REPO_DIR/services/cassandra/cassandra.yaml" >"$C_DIR/cassandra.yaml"
  cp "$REPO_DIR/services/cassandra/logback.xml" "$C_DIR/logback.xml"
  local jamm opts=()
  jamm=$(ls "$CASSANDRA_LIB"/jamm-*.jar 2>/dev/null | head -n1)
  [[ -n $jamm ]] || die "$C_NAME: no jamm jar in $CASSANDRA_LIB"
  mapfile -t opts < <(grep -vE '^\s*(#|$)' "$REPO_DIR/services/cassandra/jvm17-server.options")
  log "$C_NAME: starting Cassandra $CASSANDRA_VERSION on $HOST:$C_PORT (storage_compatibility_mode $C_COMPAT, heap $CASSANDRA_HEAP)"
  : >"$C_OUT"
  (
    cd "$C_DIR"
    exec setsid java "${opts[@]}" \
      -Xms"$CASSANDRA_HEAP" -Xmx"$CASSANDRA_HEAP" \
      -javaagent:"$jamm" \
      -Dcassandra.config="file://$C_DIR/cassandra.yaml" \
      -Dlogback.configurationFile="file://$C_DIR/logback.xml" \
      -Dcassandra.logdir="$C_DIR/logs" \
      -Dcassandra.storagedir="$C_DIR" \
      -Dcassandra.triggers_dir="$C_DIR/triggers" \
      -Dcassandra-foreground=yes \
      -Dcdc.services.instance="$C_NAME" \
      -cp "$CASSANDRA_LIB/*" \
      org.apache.cassandra.service.CassandraDaemon
  ) </dev/null >>"$C_OUT" 2>&1 &
  echo $! >"$C_PIDFILE"
}

wait_cassandra() { # instance
  cassandra_vars "$1"
  local t
  t=$(date +%s)
  if ! wait_port "$C_NAME" "$C_PIDFILE" "$C_PORT" "${CDC_CASSANDRA_START_TIMEOUT:-240}" "$C_LOG"; then
    tail_log "$C_OUT"
    return 1
  fi
  log "$C_NAME: CQL answers on $HOST:$C_PORT (pid $(read_pid "$C_PIDFILE"), waited $(($(date +%s) - t))s)"
}

stop_cassandra() {
  cassandra_vars "$1"
  signal_stop "$C_NAME" "$C_PIDFILE"
}

status_cassandra() {
  cassandra_vars "$1"
  if running "$C_PIDFILE" "$C_PORT"; then
    echo "$C_NAME: running pid $(read_pid "$C_PIDFILE"), Cassandra $CASSANDRA_VERSION, CQL $HOST:$C_PORT, storage_compatibility_mode $C_COMPAT, cdc_raw $C_DIR/cdc_raw, RSS $(rss_of "$(read_pid "$C_PIDFILE")")"
  else
    echo "$C_NAME: not running"
  fi
}

rss_of() { # pid -> RSS of the process tree in MiB
  local pid=$1 total=0 p
  for p in $pid $(pgrep -P "$pid" 2>/dev/null || true); do
    total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo "$((total / 1024)) MiB"
}

# =========================================================================================
# PostgreSQL + TimescaleDB
# =========================================================================================
# As root the cluster runs as user postgres, who cannot enter /root: then the cluster lives in
# postgres's home, in a directory named after the state directory, and $STATE_DIR/postgres
# links to it.
pg_vars() {
  PG_LINK=$STATE_DIR/postgres
  if [[ $EUID -eq 0 ]]; then
    local home tag
    home=$(getent passwd postgres | cut -d: -f6)
    tag=$(printf '%s' "$STATE_DIR" | md5sum | cut -c1-10)
    PG_ROOT=${CDC_SERVICES_PG_DIR:-${home:-/var/lib/postgresql}/cdc-services-$tag}
  else
    PG_ROOT=${CDC_SERVICES_PG_DIR:-$STATE_DIR/postgres}
  fi
  PGDATA_DIR=$PG_ROOT/data
  PG_SOCKET_DIR=$PG_ROOT/run
  PG_LOG=$PG_ROOT/log/postgresql.log
  PG_PIDFILE=$PGDATA_DIR/postmaster.pid
}
as_pg() { if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_pid() { # the postmaster's pid, if postmaster.pid names a live postgres process
  local pid
  [[ -f $PG_PIDFILE ]] || return 0
  pid=$(head -n1 "$PG_PIDFILE" | tr -d ' \n')
  if [[ -n $pid && -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$PGDATA_DIR"; then
    echo "$pid"
  fi
  return 0
}
psql_admin() { # db, then psql args
  local db=$1
  shift
  as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" -p "$PG_PORT" -U postgres -d "$db" "$@"
}

ensure_timescaledb() {
  local pkglibdir sharedir
  pkglibdir=$("$PG_BIN/pg_config" --pkglibdir)
  sharedir=$("$PG_BIN/pg_config" --sharedir)
  if [[ -f $pkglibdir/timescaledb-$TIMESCALEDB_VERSION.so && -f $sharedir/extension/timescaledb--$TIMESCALEDB_VERSION.sql ]]; then
    return 0
  fi
  local build_root=$CACHE_DIR/timescaledb/$TIMESCALEDB_DEB_VERSION t
  t=$(date +%s)
  ensure_packages postgresql-server-dev-$PG_MAJOR cmake gcc make libssl-dev dpkg-dev
  if [[ ! -f $build_root/.built ]]; then
    rm -rf "$build_root"
    mkdir -p "$build_root"
    # TimescaleDB is not packaged for bookworm; build it from Debian trixie's source package.
    local list=/etc/apt/sources.list.d/cdc-services-trixie-src.list uri
    uri=$(grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
      awk '{print $2}' | grep -vE 'security|backports' | grep -iE 'debian' | head -n1 || true)
    uri=${uri:-http://deb.debian.org/debian}
    log "timescaledb: fetching source package timescaledb=$TIMESCALEDB_DEB_VERSION (deb-src $uri trixie main)"
    echo "deb-src $uri trixie main" | as_root tee "$list" >/dev/null
    local ok=1
    as_root apt-get update -qq >/dev/null || ok=0
    if [[ $ok -eq 1 ]]; then
      (cd "$build_root" && apt-get source -qq "timescaledb=$TIMESCALEDB_DEB_VERSION" >"$build_root/source.log" 2>&1) || ok=0
    fi
    as_root rm -f "$list"
    as_root apt-get update -qq >/dev/null || true
    APT_UPDATED=1
    if [[ $ok -eq 0 ]]; then
      tail_log "$build_root/source.log"
      die "timescaledb: could not fetch the source package"
    fi
    local src
    src=$(find "$build_root" -maxdepth 1 -mindepth 1 -type d -name 'timescaledb-*' | head -n1)
    [[ -n $src ]] || die "timescaledb: source directory not found in $build_root"
    log "timescaledb: building $TIMESCALEDB_VERSION (APACHE_ONLY) for PostgreSQL $PG_MAJOR"
    if ! (cd "$src" && ./bootstrap -DCMAKE_BUILD_TYPE=Release -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
      -DWARNINGS_AS_ERRORS=OFF -DAPACHE_ONLY=ON -DSEND_TELEMETRY_DEFAULT=OFF -DUSE_TELEMETRY=OFF \
      -DPG_CONFIG="$PG_BIN/pg_config" && make -C build -j"$(nproc)") >"$build_root/build.log" 2>&1; then
      tail_log "$build_root/build.log"
      die "timescaledb: build failed"
    fi
    ln -sfn "$src" "$build_root/src"
    touch "$build_root/.built"
  fi
  log "timescaledb: installing into $pkglibdir"
  if ! as_root make -C "$build_root/src/build" install >"$build_root/install.log" 2>&1; then
    tail_log "$build_root/install.log"
    die "timescaledb: make install failed"
  fi
  log "timescaledb: ready ($(($(date +%s) - t))s)"
}

start_postgres() {
  pg_vars
  ensure_packages postgresql-$PG_MAJOR openssl
  ensure_timescaledb
  local pid
  pid=$(pg_pid)
  if pid_alive "$pid" && port_open "$PG_PORT"; then
    log "postgres: already running (pid $pid, port $PG_PORT)"
    return 0
  fi
  check_port_free postgres "$PG_PORT"
  if [[ -f $PG_PIDFILE ]]; then
    # left by a server that was killed; its pid may now belong to another process
    log "postgres: removing stale $PG_PIDFILE"
    rm -f "$PG_PIDFILE"
  fi
  ensure_tls
  local t
  t=$(date +%s)
  mkdir -p "$PG_ROOT"
  [[ $EUID -eq 0 ]] && chown postgres:postgres "$PG_ROOT"
  as_pg mkdir -p "$PG_SOCKET_DIR" "$PG_ROOT/log" "$PG_ROOT/tls"
  mkdir -p "$STATE_DIR"
  [[ $PG_ROOT != "$PG_LINK" ]] && ln -sfn "$PG_ROOT" "$PG_LINK"
  # the server key must belong to the server's user and be private
  install -m 600 "$TLS_DIR/server.key" "$PG_ROOT/tls/server.key"
  install -m 644 "$TLS_DIR/server.crt" "$PG_ROOT/tls/server.crt"
  install -m 644 "$TLS_DIR/ca.crt" "$PG_ROOT/tls/ca.crt"
  [[ $EUID -eq 0 ]] && chown -R postgres:postgres "$PG_ROOT/tls"
  if [[ ! -f $PGDATA_DIR/PG_VERSION ]]; then
    log "postgres: initdb $PGDATA_DIR"
    as_pg "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres -E UTF8 --locale=C \
      --auth-local=trust --auth-host=scram-sha-256 >"$PG_ROOT/log/initdb.log" 2>&1 ||
      {
        tail_log "$PG_ROOT/log/initdb.log"
        die "postgres: initdb failed"
      }
    as_pg tee -a "$PGDATA_DIR/postgresql.conf" >/dev/null <<EOF

# ---- cdc-services (scripts/services.sh) ----
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
max_connections = 200
shared_buffers = 128MB
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
# test server: durability traded for speed
fsync = off
synchronous_commit = off
full_page_writes = off
ssl = on
ssl_cert_file = '$PG_ROOT/tls/server.crt'
ssl_key_file = '$PG_ROOT/tls/server.key'
ssl_ca_file = '$PG_ROOT/tls/ca.crt'
password_encryption = 'scram-sha-256'
EOF
    as_pg tee "$PGDATA_DIR/pg_hba.conf" >/dev/null <<EOF
# cdc-services: socket is trusted (private directory), TCP needs a password
local   all  all                 trust
host    all  all  127.0.0.1/32   scram-sha-256
EOF
  fi
  log "postgres: starting PostgreSQL $PG_MAJOR on $HOST:$PG_PORT"
  if ! as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t 60 start >/dev/null; then
    tail_log "$PG_LOG"
    die "postgres: pg_ctl start failed"
  fi
  # role and databases (idempotent)
  psql_admin postgres <<EOF || { tail_log "$PG_LOG"; die "postgres: creating role/databases failed"; }
SELECT format('CREATE ROLE %I LOGIN SUPERUSER', '$DB_USER')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER') \gexec
ALTER ROLE "$DB_USER" WITH LOGIN SUPERUSER PASSWORD '$DB_PASSWORD';
SELECT 'CREATE DATABASE cdc_pg OWNER "$DB_USER"' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'cdc_pg') \gexec
SELECT 'CREATE DATABASE cdc_ts OWNER "$DB_USER"' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'cdc_ts') \gexec
EOF
  psql_admin cdc_ts -c "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS timescaledb" ||
    {
      tail_log "$PG_LOG"
      die "postgres: CREATE EXTENSION timescaledb failed"
    }
  log "postgres: ready (pid $(pg_pid), $(($(date +%s) - t))s)"
}

stop_postgres() {
  pg_vars
  local pid
  pid=$(pg_pid)
  if ! pid_alive "$pid"; then
    log "postgres: not running"
    return 0
  fi
  log "postgres: stopping pid $pid"
  as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >/dev/null || true
}

status_postgres() {
  pg_vars
  local pid v ts
  pid=$(pg_pid)
  if pid_alive "$pid" && port_open "$PG_PORT"; then
    v=$(psql_admin postgres -tAc 'SHOW server_version' 2>/dev/null || echo '?')
    ts=$(psql_admin cdc_ts -tAc "SELECT extversion FROM pg_extension WHERE extname='timescaledb'" 2>/dev/null || echo '?')
    echo "postgres: running pid $pid, PostgreSQL $v, TimescaleDB $ts (Apache-2 build), $HOST:$PG_PORT, data $PGDATA_DIR, RSS $(pg_rss "$pid")"
  else
    echo "postgres: not running"
  fi
}
pg_rss() { # postmaster + all backends
  local total=0 p
  for p in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
    total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo "$((total / 1024)) MiB (sum over postmaster and children, shared buffers counted per process)"
}

# =========================================================================================
# ClickHouse
# =========================================================================================
CH_DIR=$STATE_DIR/clickhouse
CH_PIDFILE=$CH_DIR/clickhouse.pid
CH_LOG=$CH_DIR/log/clickhouse-server.log
CH_ERRLOG=$CH_DIR/log/clickhouse-server.err.log
CH_OUT=$CH_DIR/log/stdout.log

ch_server_bin() {
  local b
  for b in /usr/sbin/clickhouse-server /usr/bin/clickhouse-server "$(command -v clickhouse-server || true)"; do
    [[ -n $b && -x $b ]] && { echo "$b"; return 0; }
  done
  echo clickhouse-server
}

start_clickhouse() {
  if running "$CH_PIDFILE" "$CH_HTTP_PORT"; then
    log "clickhouse: already running (pid $(read_pid "$CH_PIDFILE"), port $CH_HTTP_PORT)"
    return 0
  fi
  ensure_packages clickhouse-server openssl curl
  check_port_free clickhouse "$CH_HTTP_PORT"
  check_port_free clickhouse "$CH_TCP_PORT"
  check_port_free clickhouse "$CH_HTTPS_PORT"
  ensure_tls
  local t pw_sha
  t=$(date +%s)
  mkdir -p "$CH_DIR"/{data,tmp,user_files,format_schemas,log,tls}
  cp "$TLS_DIR/server.crt" "$TLS_DIR/server.key" "$TLS_DIR/ca.crt" "$CH_DIR/tls/"
  pw_sha=$(printf '%s' "$DB_PASSWORD" | sha256sum | cut -d' ' -f1)
  sed -e "s#@DIR@#$CH_DIR#g" -e "s#@HOST@#$HOST#g" -e "s#@HTTP_PORT@#$CH_HTTP_PORT#g" \
    -e "s#@HTTPS_PORT@#$CH_HTTPS_PORT#g" -e "s#@TCP_PORT@#$CH_TCP_PORT#g" \
    -e "s#@INTERSERVER_PORT@#$CH_INTERSERVER_PORT#g" \
    "$REPO_DIR/services/clickhouse/config.xml" >"$CH_DIR/config.xml"
  sed -e "s#@USER@#$DB_USER#g" -e "s#@PASSWORD_SHA256@#$pw_sha#g" \
    "$REPO_DIR/services/clickhouse/users.xml" >"$CH_DIR/users.xml"
  log "clickhouse: starting clickhouse-server on $HOST:$CH_HTTP_PORT (http), $CH_HTTPS_PORT (https), $CH_TCP_PORT (tcp)"
  (
    cd "$CH_DIR"
    exec setsid "$(ch_server_bin)" --config-file="$CH_DIR/config.xml"
  ) </dev/null >"$CH_OUT" 2>&1 &
  echo $! >"$CH_PIDFILE"
  if ! wait_port clickhouse "$CH_PIDFILE" "$CH_HTTP_PORT" 60 "$CH_ERRLOG"; then
    tail_log "$CH_LOG"
    tail_log "$CH_OUT"
    die "clickhouse: failed to start"
  fi
  local i
  for ((i = 0; i < 100; i++)); do
    [[ $(curl -s "http://$HOST:$CH_HTTP_PORT/ping" || true) == "Ok." ]] && break
    sleep 0.1
  done
  log "clickhouse: ready (pid $(read_pid "$CH_PIDFILE"), $(($(date +%s) - t))s)"
}

stop_clickhouse() { signal_stop clickhouse "$CH_PIDFILE"; }

status_clickhouse() {
  if running "$CH_PIDFILE" "$CH_HTTP_PORT"; then
    local v
    v=$(curl -s "http://$HOST:$CH_HTTP_PORT/?query=SELECT%20version()" || echo '?')
    echo "clickhouse: running pid $(read_pid "$CH_PIDFILE"), ClickHouse $v, http $HOST:$CH_HTTP_PORT, https $HOST:$CH_HTTPS_PORT, tcp $HOST:$CH_TCP_PORT, RSS $(rss_of "$(read_pid "$CH_PIDFILE")")"
  else
    echo "clickhouse: not running"
  fi
}

# =========================================================================================
# Toxiproxy
# =========================================================================================
TOXI_DIR=$STATE_DIR/toxiproxy
TOXI_PIDFILE=$TOXI_DIR/toxiproxy.pid
TOXI_LOG=$TOXI_DIR/toxiproxy.log
TOXI_BIN=$CACHE_DIR/toxiproxy/toxiproxy-server-$TOXIPROXY_VERSION

ensure_go() {
  if ! command -v go >/dev/null; then
    [[ -x /usr/local/go/bin/go ]] && export PATH=$PATH:/usr/local/go/bin
  fi
  if ! command -v go >/dev/null; then
    ensure_packages golang-go ca-certificates
    # Debian's Go may be older than the module needs; let it fetch a newer toolchain module
    export GOTOOLCHAIN=auto
  fi
}

ensure_toxiproxy() {
  [[ -x $TOXI_BIN ]] && return 0
  ensure_go
  local t gopath=$CACHE_DIR/toxiproxy/go
  t=$(date +%s)
  log "toxiproxy: go install github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION"
  mkdir -p "$gopath/bin"
  if ! GOPATH=$gopath GOBIN=$gopath/bin GOFLAGS=-modcacherw GOMODCACHE=$gopath/pkg/mod \
    go install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" >"$CACHE_DIR/toxiproxy/build.log" 2>&1; then
    tail_log "$CACHE_DIR/toxiproxy/build.log"
    die "toxiproxy: go install failed"
  fi
  cp "$gopath/bin/server" "$TOXI_BIN"
  log "toxiproxy: built $TOXI_BIN ($(($(date +%s) - t))s)"
}

toxi_api() { # method path [json]
  curl -sS -f -X "$1" -H 'Content-Type: application/json' ${3:+--data "$3"} "http://$HOST:$TOXIPROXY_PORT$2"
}

toxi_proxies() {
  cat <<EOF
[
 {"name": "postgres",   "listen": "$HOST:$PROXY_PG_PORT",        "upstream": "$HOST:$PG_PORT",          "enabled": true},
 {"name": "clickhouse", "listen": "$HOST:$PROXY_CH_PORT",        "upstream": "$HOST:$CH_HTTP_PORT",     "enabled": true},
 {"name": "cassandra",  "listen": "$HOST:$PROXY_CASSANDRA_PORT",  "upstream": "$HOST:$CASSANDRA_PORT",  "enabled": true},
 {"name": "cassandra8", "listen": "$HOST:$PROXY_CASSANDRA8_PORT", "upstream": "$HOST:$CASSANDRA8_PORT", "enabled": true}
]
EOF
}

start_toxiproxy() {
  ensure_packages curl
  if running "$TOXI_PIDFILE" "$TOXIPROXY_PORT"; then
    log "toxiproxy: already running (pid $(read_pid "$TOXI_PIDFILE"), port $TOXIPROXY_PORT)"
  else
    check_port_free toxiproxy "$TOXIPROXY_PORT"
    ensure_toxiproxy
    mkdir -p "$TOXI_DIR"
    log "toxiproxy: starting on $HOST:$TOXIPROXY_PORT"
    toxi_proxies >"$TOXI_DIR/proxies.json"
    (exec setsid "$TOXI_BIN" -host "$HOST" -port "$TOXIPROXY_PORT" -config "$TOXI_DIR/proxies.json") </dev/null >"$TOXI_LOG" 2>&1 &
    echo $! >"$TOXI_PIDFILE"
    wait_port toxiproxy "$TOXI_PIDFILE" "$TOXIPROXY_PORT" 30 "$TOXI_LOG" || die "toxiproxy: failed to start"
  fi
  # (re)create the proxies; /populate creates missing ones and leaves existing ones alone,
  # but a proxy a test left disabled is re-enabled and toxics are cleared by /reset.
  local body
  body=$(toxi_proxies)
  toxi_api POST /populate "$body" >/dev/null || { tail_log "$TOXI_LOG"; die "toxiproxy: creating proxies failed"; }
  toxi_api POST /reset >/dev/null || true
  log "toxiproxy: proxies postgres :$PROXY_PG_PORT, clickhouse :$PROXY_CH_PORT, cassandra :$PROXY_CASSANDRA_PORT, cassandra8 :$PROXY_CASSANDRA8_PORT"
}

stop_toxiproxy() { signal_stop toxiproxy "$TOXI_PIDFILE"; }

status_toxiproxy() {
  if running "$TOXI_PIDFILE" "$TOXIPROXY_PORT"; then
    local n
    n=$(curl -s "http://$HOST:$TOXIPROXY_PORT/proxies" | grep -o '"name"' | wc -l || echo '?')
    echo "toxiproxy: running pid $(read_pid "$TOXI_PIDFILE"), toxiproxy $TOXIPROXY_VERSION, $n proxies, API http://$HOST:$TOXIPROXY_PORT, RSS $(rss_of "$(read_pid "$TOXI_PIDFILE")")"
  else
    echo "toxiproxy: not running"
  fi
}

# =========================================================================================
# commands
# =========================================================================================
selected() { # -> services named on the command line, or all
  if [[ $# -eq 0 ]]; then
    printf '%s\n' "${ALL_SERVICES[@]}"
  else
    local s
    for s in "$@"; do
      [[ " ${ALL_SERVICES[*]} " == *" $s "* ]] || die "unknown service '$s' (known: ${ALL_SERVICES[*]})"
      echo "$s"
    done
  fi
}

cmd_up() {
  local services s cass=()
  mapfile -t services < <(selected "$@")
  mkdir -p "$CACHE_DIR" "$STATE_DIR"
  log "up: ${services[*]} (cache $CACHE_DIR, state $STATE_DIR)"
  # Building toxiproxy is slow on a cold machine (Go compiles its dependencies): do it meanwhile.
  local toxi_build=""
  if [[ " ${services[*]} " == *" toxiproxy "* && ! -x $TOXI_BIN ]] && ! running "$TOXI_PIDFILE" "$TOXIPROXY_PORT" &&
    { command -v go >/dev/null || [[ -x /usr/local/go/bin/go ]]; }; then
    ensure_toxiproxy &
    toxi_build=$!
  fi
  # Cassandra takes longest: start its JVMs first and let them boot while the rest starts.
  for s in "${services[@]}"; do
    case $s in cassandra | cassandra8)
      start_cassandra "$s"
      cass+=("$s")
      ;;
    esac
  done
  for s in "${services[@]}"; do
    case $s in
      postgres) start_postgres ;;
      clickhouse) start_clickhouse ;;
    esac
  done
  for s in "${cass[@]}"; do
    wait_cassandra "$s" || die "$s: failed to start"
  done
  if [[ -n $toxi_build ]]; then
    wait "$toxi_build" || die "toxiproxy: build failed"
  fi
  for s in "${services[@]}"; do
    [[ $s == toxiproxy ]] && start_toxiproxy
  done
  log "up: done"
}

cmd_down() {
  local services s
  mapfile -t services < <(selected "$@")
  for s in "${services[@]}"; do
    case $s in
      cassandra | cassandra8) stop_cassandra "$s" ;;
      postgres) stop_postgres ;;
      clickhouse) stop_clickhouse ;;
      toxiproxy) stop_toxiproxy ;;
    esac
  done
  wait_stopped 60
  log "down: done"
}

cmd_status() {
  local services s
  mapfile -t services < <(selected "$@")
  for s in "${services[@]}"; do
    case $s in
      cassandra | cassandra8) status_cassandra "$s" ;;
      postgres) status_postgres ;;
      clickhouse) status_clickhouse ;;
      toxiproxy) status_toxiproxy ;;
    esac
  done
}

cmd_env() {
  local pg="postgresql://$DB_USER:$DB_PASSWORD@$HOST"
  cat <<EOF
export CDC_TEST_CASSANDRA_HOSTS=$HOST
export CDC_TEST_CASSANDRA_PORT=$CASSANDRA_PORT
export CDC_TEST_CASSANDRA_CDC_RAW=$STATE_DIR/cassandra/cdc_raw
export CDC_TEST_CASSANDRA_COMMITLOG_VERSION=7
export CDC_TEST_CASSANDRA8_HOSTS=$HOST
export CDC_TEST_CASSANDRA8_PORT=$CASSANDRA8_PORT
export CDC_TEST_CASSANDRA8_CDC_RAW=$STATE_DIR/cassandra8/cdc_raw
export CDC_TEST_CASSANDRA8_COMMITLOG_VERSION=8
export CDC_TEST_POSTGRES_DSN=$pg:$PG_PORT/cdc_pg
export CDC_TEST_TIMESCALE_DSN=$pg:$PG_PORT/cdc_ts
export CDC_TEST_POSTGRES_CA_FILE=$TLS_DIR/ca.crt
export CDC_TEST_CLICKHOUSE_URL=http://$DB_USER:$DB_PASSWORD@$HOST:$CH_HTTP_PORT
export CDC_TEST_CLICKHOUSE_HTTPS_URL=https://$DB_USER:$DB_PASSWORD@$HOST:$CH_HTTPS_PORT
export CDC_TEST_CLICKHOUSE_CA_FILE=$TLS_DIR/ca.crt
export CDC_TEST_TOXIPROXY_URL=http://$HOST:$TOXIPROXY_PORT
export CDC_TEST_POSTGRES_PROXY_DSN=$pg:$PROXY_PG_PORT/cdc_pg
export CDC_TEST_CLICKHOUSE_PROXY_URL=http://$DB_USER:$DB_PASSWORD@$HOST:$PROXY_CH_PORT
export CDC_TEST_CASSANDRA_PROXY_PORT=$PROXY_CASSANDRA_PORT
export CDC_TEST_CASSANDRA8_PROXY_PORT=$PROXY_CASSANDRA8_PORT
EOF
}

usage() {
  sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

main() {
  [[ $# -ge 1 ]] || usage
  local cmd=$1
  shift
  case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    env) cmd_env ;;
    -h | --help | help) usage ;;
    *) usage ;;
  esac
}

main "$@"
