#!/usr/bin/env bash
# The test run: real PostgreSQL and Redis (started here if they are not running), real processes.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "[test] $*"; }

PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  say "installing $* (Debian packages)"
  as_root apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "$@" >/dev/null
}

# --- PostgreSQL ---------------------------------------------------------------------------------
if ! command -v pg_isready >/dev/null; then apt_install postgresql postgresql-client; fi
if ! pg_isready -h "$PG_HOST" -p "$PG_PORT" -q; then
  say "PostgreSQL is not running on $PG_HOST:$PG_PORT: starting it"
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then apt_install postgresql; fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
  for _ in $(seq 1 60); do pg_isready -h "$PG_HOST" -p "$PG_PORT" -q && break; sleep 0.5; done
  pg_isready -h "$PG_HOST" -p "$PG_PORT" -q || { say "PostgreSQL did not start"; exit 1; }
fi
PG_USER=${PG_USER:-postgres}
if ! psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  say "cannot connect to PostgreSQL as $PG_USER over TCP (trust auth expected): see README 'Tests'"; exit 1
fi

# --- Redis --------------------------------------------------------------------------------------
if ! command -v redis-server >/dev/null; then apt_install redis-server; fi
if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  say "Redis is not running on 127.0.0.1:$REDIS_PORT: starting it"
  mkdir -p /tmp/bridge-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /tmp/bridge-redis --logfile /tmp/bridge-redis/redis.log
  for _ in $(seq 1 40); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.25; done
fi

# --- Chromium (tests/foundation/test_docs_page.py opens /api/docs/ in it, without network) ---------
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt_install chromium chromium-driver
fi

export DATABASE_URL=${TEST_DATABASE_URL:-postgres://$PG_USER@$PG_HOST:$PG_PORT/bridge_test}
export REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/9}
redis-cli -u "$REDIS_URL" flushdb >/dev/null
say "PostgreSQL $PG_HOST:$PG_PORT, Redis $REDIS_URL; running pytest"
exec .venv/bin/python -m pytest -p no:cacheprovider --create-db "$@"
