# Shared by scripts/test and scripts/up: make Redis and PostgreSQL reachable, installing them from
# Debian's packages and starting them when needed, and install the tools the tests call. Sourced,
# not executed, by scripts that run under `set -Eeuo pipefail`.
#
# Every install or start step runs under `step NAME HINT`: when a command of the step fails, the
# ERR trap below names the step, the command and the hint (what the user can do), so a failure is
# never a silent exit.
# shellcheck shell=bash

: "${REDIS_URL:=redis://127.0.0.1:6379}"
PG_DEFAULT_ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"

# How many times an apt-get download is tried before the step fails (default 3).
: "${EXAI_APT_ATTEMPTS:=3}"

log() { printf '==> %s\n' "$*" >&2; }

STEP=""
STEP_HINT=""

# Starts step $1 (printed) whose failure the ERR trap explains with hint $2.
step() {
  STEP=$1
  STEP_HINT=${2:-}
  log "$STEP"
}

# The ERR trap: which step failed, at which command, and what to do. Reported once, by the
# top-level shell (a failing command substitution reports through the command that used it).
on_error() {
  local status=$1 command=$2
  if [ "${BASH_SUBSHELL:-0}" -ne 0 ]; then return 0; fi
  trap - ERR
  log "FAILED: ${STEP:-$(basename "$0")} (exit status $status)"
  # A function that failed shows as its `return`, which says nothing: only the place then.
  case "$command" in
    return*) log "  at ${BASH_SOURCE[1]:-$0} line ${BASH_LINENO[0]}" ;;
    *) log "  at ${BASH_SOURCE[1]:-$0} line ${BASH_LINENO[0]}: $command" ;;
  esac
  if [ -n "$STEP_HINT" ]; then log "  what to do: $STEP_HINT"; fi
}
trap 'on_error $? "$BASH_COMMAND"' ERR

# Runs `apt-get "$@"` non-interactively, waiting for another apt to release its lock, retrying
# (EXAI_APT_ATTEMPTS times in all) when a download fails.
apt_get() {
  local attempt=1
  while true; do
    if DEBIAN_FRONTEND=noninteractive apt-get -qq -o Acquire::Retries=3 \
      -o DPkg::Lock::Timeout=300 "$@" >/dev/null; then
      return 0
    fi
    if [ "$attempt" -ge "$EXAI_APT_ATTEMPTS" ]; then
      log "apt-get $* failed $attempt times"
      return 1
    fi
    log "apt-get $* failed (attempt $attempt of $EXAI_APT_ATTEMPTS); trying again in $((attempt * 5)) s"
    sleep $((attempt * 5))
    attempt=$((attempt + 1))
  done
}

# Installs Debian packages "$@" (without recommends). Needs apt-get and root.
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    log "cannot install $*: this system has no apt-get; install them yourself and re-run"
    return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    log "installing $* needs root: re-run as root, or install them yourself and re-run"
    return 1
  fi
  if [ -z "${_APT_UPDATED:-}" ]; then
    log "apt-get update"
    if ! apt_get update; then
      log "apt-get update failed: check the network and the sources in /etc/apt/ (apt-get update shows the error)"
      return 1
    fi
    _APT_UPDATED=1
  fi
  log "apt-get install $*"
  if ! apt_get install -y --no-install-recommends "$@"; then
    log "apt-get install $* failed: run it by hand to see why, fix that, and re-run"
    return 1
  fi
}

# Installs the packages of the pairs "command package ..." whose command is missing, in one go.
ensure_commands() {
  local missing=()
  while [ $# -ge 2 ]; do
    if ! command -v "$1" >/dev/null 2>&1 && [ ! -x "$1" ]; then missing+=("$2"); fi
    shift 2
  done
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

redis_ping() { redis-cli -u "$REDIS_URL" ping 2>/dev/null | grep -q PONG; }

# Makes Redis answer at REDIS_URL, starting one on its port (bound to 127.0.0.1) when none does.
# With a directory $1, the Redis it starts keeps its data there the way docker-compose.yml's
# does (append-only file fsynced every second, `noeviction`), so a restart loses nothing; its
# log is $1/redis.log. Without one it keeps nothing (no snapshot, no append-only file, under
# /tmp/exai-redis): the tests' Redis, whose data is each test's own and thrown away.
ensure_redis() {
  local data_dir=${1:-}
  step "checking Redis at $REDIS_URL" \
    "install Redis (as root: apt-get install redis-server redis-tools) or set REDIS_URL to a running server, then re-run"
  ensure_commands redis-server redis-server redis-cli redis-tools
  if redis_ping; then return 0; fi
  local port dir persistence
  port=$(printf '%s' "$REDIS_URL" | sed -E 's#.*:([0-9]+)(/.*)?$#\1#')
  if [ -n "$data_dir" ]; then
    dir=$data_dir
    persistence=(--appendonly yes --appendfsync everysec --maxmemory-policy noeviction)
  else
    dir=/tmp/exai-redis
    persistence=(--save "" --appendonly no)
  fi
  step "starting redis on 127.0.0.1:${port} (data in $dir)" \
    "see $dir/redis.log; or start Redis yourself (or set REDIS_URL to a running server) and re-run"
  mkdir -p "$dir"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" "${persistence[@]}" \
    --dir "$dir" --logfile "$dir/redis.log"
  STARTED_REDIS_PORT=$port
  STARTED_REDIS_DURABLE=${data_dir:+1}
  for _ in $(seq 1 100); do
    if redis_ping; then return 0; fi
    sleep 0.1
  done
  log "redis did not answer PING on port $port within 10 s (see $dir/redis.log)"
  return 1
}

pg_try() { psql "$1" -Atqc 'select 1' >/dev/null 2>&1; }

# The newest PostgreSQL server version installed (a directory of /usr/lib/postgresql with a
# pg_ctl), or nothing.
pg_installed_version() {
  local dir newest=""
  for dir in /usr/lib/postgresql/*/bin/pg_ctl; do
    [ -x "$dir" ] || continue
    dir=${dir#/usr/lib/postgresql/}
    dir=${dir%%/*}
    if [ -z "$newest" ] || [ "$(printf '%s\n%s\n' "$newest" "$dir" | sort -V | tail -n1)" = "$dir" ]; then
      newest=$dir
    fi
  done
  printf '%s' "$newest"
}

pg_start_local() {
  local version
  version=$(pg_installed_version)
  if [ -z "$version" ] || ! command -v pg_lsclusters >/dev/null 2>&1; then
    step "installing postgresql" \
      "install PostgreSQL (as root: apt-get install postgresql postgresql-client) or set EXAI_TEST_PG_ADMIN_URL to a superuser URL of a running server, then re-run"
    apt_install postgresql postgresql-client
    version=$(pg_installed_version)
    if [ -z "$version" ]; then
      log "the postgresql package installed no server under /usr/lib/postgresql"
      return 1
    fi
  fi
  # Debian's package usually creates (and starts) the cluster `main`; create it when it did not.
  if [ ! -d "/etc/postgresql/$version/main" ]; then
    step "creating the postgresql $version cluster main" \
      "create it yourself (as root: pg_createcluster $version main) and re-run"
    pg_createcluster "$version" main >/dev/null
  fi
  if ! pg_lsclusters -h 2>/dev/null | grep -q "online"; then
    step "starting postgresql $version" \
      "see /var/log/postgresql/postgresql-$version-main.log; start it yourself (as root: pg_ctlcluster $version main start) and re-run"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster "$version" main start
    STARTED_PG_VERSION=$version
  fi
  for _ in $(seq 1 100); do
    if pg_isready -q -h 127.0.0.1 -p 5432; then return 0; fi
    sleep 0.1
  done
  log "postgresql did not accept connections on 127.0.0.1:5432 within 10 s (is the cluster on another port? pg_lsclusters tells)"
  return 1
}

ensure_postgres() {
  step "checking PostgreSQL" \
    "install PostgreSQL (as root: apt-get install postgresql postgresql-client) or set EXAI_TEST_PG_ADMIN_URL to a superuser URL of a running server, then re-run"
  if [ -n "${EXAI_TEST_PG_ADMIN_URL:-}" ] && command -v psql >/dev/null 2>&1 &&
    pg_try "$EXAI_TEST_PG_ADMIN_URL"; then
    return 0
  fi
  if ! command -v psql >/dev/null 2>&1 || ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    pg_start_local
  fi
  if pg_try "$PG_DEFAULT_ADMIN_URL"; then
    EXAI_TEST_PG_ADMIN_URL=$PG_DEFAULT_ADMIN_URL
    return 0
  fi
  # A fresh Debian cluster asks for a password over TCP: give the local superuser a known test
  # password through the Unix socket (peer auth as the postgres OS user).
  local with_password="postgres://postgres:postgres@127.0.0.1:5432/postgres"
  if ! pg_try "$with_password"; then
    step "setting a password for the local postgres superuser (test machine)" \
      "set EXAI_TEST_PG_ADMIN_URL to a superuser URL that works (psql URL -c 'select 1' tells) and re-run"
    if [ "$(id -u)" -eq 0 ]; then
      su postgres -s /bin/sh -c "cd / && psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
    else
      (cd / && sudo -u postgres psql -qc "ALTER USER postgres PASSWORD 'postgres'" >/dev/null)
    fi
  fi
  if ! pg_try "$with_password"; then
    log "cannot reach PostgreSQL as a superuser at 127.0.0.1:5432"
    return 1
  fi
  EXAI_TEST_PG_ADMIN_URL=$with_password
}

# Stops what ensure_redis and ensure_postgres started (nothing they found running), and adds
# the name of each to STOPPED_SERVICES.
STOPPED_SERVICES=()
stop_started_services() {
  if [ -n "${STARTED_REDIS_PORT:-}" ]; then
    log "stopping the redis this script started"
    if [ -n "${STARTED_REDIS_DURABLE:-}" ]; then
      # SHUTDOWN flushes the append-only file and writes a snapshot: nothing queued is lost.
      redis-cli -p "$STARTED_REDIS_PORT" shutdown >/dev/null 2>&1 || true
    else
      redis-cli -p "$STARTED_REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    fi
    STOPPED_SERVICES+=(redis-server)
  fi
  if [ -n "${STARTED_PG_VERSION:-}" ]; then
    log "stopping the postgresql this script started"
    pg_ctlcluster --skip-systemctl-redirect "$STARTED_PG_VERSION" main stop >/dev/null 2>&1 ||
      pg_ctlcluster "$STARTED_PG_VERSION" main stop >/dev/null 2>&1 || true
    STOPPED_SERVICES+=(postgresql)
  fi
}

# A TCP port free on loopback right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
    shuf -i 20000-60000 -n 1
}

# Waits (up to 30 s) until GET $1 answers with any HTTP status, bearer token $2.
wait_http() {
  if ! command -v curl >/dev/null 2>&1; then
    step "installing curl" "install it (as root: apt-get install curl) and re-run"
    apt_install curl
  fi
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null -H "Authorization: Bearer $2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "$1 did not answer within 30 s"
  return 1
}

# The tools the tests run besides Redis and PostgreSQL, as "command package" pairs:
# docker-compose validates docker-compose.yml (no engine needed) and brings python3 with PyYAML,
# which the compose test uses; Chromium drives the admin page; curl is what scripts/up waits
# with (the quick-start test runs it); procps has the `kill` the tests signal processes with;
# runuser (util-linux) runs PostgreSQL tools as the postgres user.
TEST_TOOLS=(
  docker-compose docker-compose
  python3 python3
  /usr/bin/chromium chromium
  curl curl
  kill procps
  runuser util-linux
  openssl openssl
  node nodejs
  npm npm
)

ensure_test_tools() {
  step "checking the tools the tests run (docker-compose, python3 with PyYAML and venv, chromium, curl, kill, openssl, node and npm)" \
    "install them (as root: apt-get install docker-compose python3-yaml python3-venv chromium curl procps openssl nodejs npm) and re-run"
  ensure_commands "${TEST_TOOLS[@]}"
  # The MCP tests build a virtual environment with the official MCP SDK (tests/mcp/), and install
  # the reference server @modelcontextprotocol/server-everything with npm (tests/src/mcp.rs).
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  if ! python3 -c 'import yaml' >/dev/null 2>&1; then
    apt_install python3-yaml
    if ! python3 -c 'import yaml' >/dev/null 2>&1; then
      log "the python3 on PATH ($(command -v python3)) cannot import yaml even with python3-yaml installed: install PyYAML for it (python3 -m pip install pyyaml) and re-run"
      return 1
    fi
  fi
}
