# Shared by scripts/test and scripts/up: make Redis and PostgreSQL reachable, installing them from
# Debian's packages and starting them when needed. Sourced, not executed.

: "${REDIS_URL:=redis://127.0.0.1:6379}"
PG_DEFAULT_ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"

log() { printf '==> %s\n' "$*" >&2; }

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    log "cannot install $*: no apt-get; install it yourself and re-run"
    return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    log "installing $* needs root (or install it yourself and re-run)"
    return 1
  fi
  if [ -z "${_APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    _APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

redis_ping() { redis-cli -u "$REDIS_URL" ping 2>/dev/null | grep -q PONG; }

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    log "installing redis"
    apt_install redis-server redis-tools
  fi
  if redis_ping; then return 0; fi
  local port
  port=$(printf '%s' "$REDIS_URL" | sed -E 's#.*:([0-9]+)(/.*)?$#\1#')
  log "starting redis on 127.0.0.1:${port}"
  mkdir -p /tmp/exai-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir /tmp/exai-redis --logfile /tmp/exai-redis/redis.log
  STARTED_REDIS_PORT=$port
  for _ in $(seq 1 100); do redis_ping && return 0; sleep 0.1; done
  log "redis did not come up (see /tmp/exai-redis/redis.log)"
  return 1
}

pg_try() { psql "$1" -Atqc 'select 1' >/dev/null 2>&1; }

pg_start_local() {
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
  if [ -z "$version" ]; then
    log "installing postgresql"
    apt_install postgresql postgresql-client
    version=$(ls /etc/postgresql | sort -V | tail -n1)
  fi
  if ! pg_lsclusters -h 2>/dev/null | grep -q "online"; then
    log "starting postgresql $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster "$version" main start
    STARTED_PG_VERSION=$version
  fi
  for _ in $(seq 1 100); do pg_isready -q -h 127.0.0.1 -p 5432 && return 0; sleep 0.1; done
  log "postgresql did not come up"
  return 1
}

ensure_postgres() {
  if [ -n "${EXAI_TEST_PG_ADMIN_URL:-}" ] && pg_try "$EXAI_TEST_PG_ADMIN_URL"; then return 0; fi
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
    log "setting a password for the local postgres superuser (test machine)"
    if [ "$(id -u)" -eq 0 ]; then
      su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
    else
      sudo -u postgres psql -qc "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
    fi
  fi
  pg_try "$with_password" || { log "cannot reach PostgreSQL as a superuser; set EXAI_TEST_PG_ADMIN_URL"; return 1; }
  EXAI_TEST_PG_ADMIN_URL=$with_password
}

# Stops what ensure_redis and ensure_postgres started (nothing they found running).
stop_started_services() {
  if [ -n "${STARTED_REDIS_PORT:-}" ]; then
    log "stopping the redis this script started"
    redis-cli -p "$STARTED_REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  fi
  if [ -n "${STARTED_PG_VERSION:-}" ]; then
    log "stopping the postgresql this script started"
    pg_ctlcluster --skip-systemctl-redirect "$STARTED_PG_VERSION" main stop >/dev/null 2>&1 ||
      pg_ctlcluster "$STARTED_PG_VERSION" main stop >/dev/null 2>&1 || true
  fi
}

# A TCP port free on loopback right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
    shuf -i 20000-60000 -n 1
}

# Waits (up to 30 s) until GET $1 answers with any HTTP status, bearer token $2.
wait_http() {
  command -v curl >/dev/null 2>&1 || apt_install curl
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null -H "Authorization: Bearer $2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "$1 did not answer"
  return 1
}

# docker-compose (Debian's package) validates docker-compose.yml in the tests; no engine needed.
ensure_docker_compose() {
  if command -v docker-compose >/dev/null 2>&1; then return 0; fi
  log "installing docker-compose (to validate docker-compose.yml)"
  apt_install docker-compose
}
