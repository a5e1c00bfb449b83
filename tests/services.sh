#!/usr/bin/env bash
# Start the services the tests need, where they are not already running:
# Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (trust auth, database "test").
# The S3 endpoint (moto's server) is started by the test suite itself, in its own process.
set -u
here="$(cd "$(dirname "$0")/.." && pwd)"
state="$here/.services"
mkdir -p "$state"

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; }

if ! redis_up; then
  if command -v redis-server >/dev/null; then
    echo "starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir "$state" --logfile "$state/redis.log"
    for _ in $(seq 50); do redis_up && break; sleep 0.1; done
  fi
  redis_up || echo "warning: Redis is not running and could not be started (apt-get install redis-server)"
fi

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "starting the system PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  if ! pg_up; then
    bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    if [ -n "$bindir" ] && [ -x "$bindir/initdb" ]; then
      echo "starting a private PostgreSQL in $state/pg"
      runas=""; [ "$(id -u)" = 0 ] && runas="runuser -u postgres --"
      if [ ! -f "$state/pg/PG_VERSION" ]; then
        mkdir -p "$state/pg"; [ -n "$runas" ] && chown postgres "$state/pg"
        $runas "$bindir/initdb" -D "$state/pg" -A trust -U postgres >/dev/null
      fi
      $runas "$bindir/pg_ctl" -D "$state/pg" -l "$state/pg.log" -o "-h 127.0.0.1 -p 5432 -k /tmp" start >/dev/null
      for _ in $(seq 100); do pg_up && break; sleep 0.1; done
      psql -h 127.0.0.1 -U postgres -tc "select 1 from pg_database where datname='test'" | grep -q 1 \
        || psql -h 127.0.0.1 -U postgres -c "create database test" >/dev/null
    fi
  fi
  pg_up || echo "warning: PostgreSQL is not running and could not be started (apt-get install postgresql)"
fi
exit 0

# melt (MLT's renderer) checks that an exported MLT timeline cuts where genfarm's MP4 does;
# installed from Debian where this shell may (the test is skipped without it)
if ! command -v melt >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing melt (apt-get install melt)"
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q melt >"$state/melt.log" 2>&1 \
    || echo "warning: melt could not be installed (see $state/melt.log)"
fi
