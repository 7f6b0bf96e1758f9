#!/usr/bin/env bash
# Start a PostgreSQL server on loopback for the storage tests; safe to run again (it only does what is missing).
#
# Run as root on Debian (CI does, on a fresh machine). Everything it does is reported on stderr; stdout is
# one line to eval, so:   eval "$(sudo scripts/postgres.sh)"   or   eval "$(scripts/postgres.sh)"  as root.
# It prints:  export TUNERY_TEST_DATABASE_URL=postgresql+psycopg://tunery:tunery@127.0.0.1:<port>/tunery_test
# The role may create databases; the tests create (and drop) one schema per test inside tunery_test.
set -euo pipefail

ROLE=tunery
PASSWORD=tunery
DATABASE=tunery_test
CLUSTER=main

log() { echo "postgres.sh: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "run me as root (I install packages and start the server as the postgres user)"
  exit 1
fi

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  log "installing postgresql with apt-get"
  apt-get update -qq >&2
  # policy-rc.d-less containers may try to start the server during install; we start it ourselves below.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
fi

VERSION=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
if ! pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c { found = 1 } END { exit !found }'; then
  log "creating cluster $VERSION/$CLUSTER"
  pg_createcluster "$VERSION" "$CLUSTER" >&2
fi

# Loopback only: nothing outside this machine can reach the test server. (A conf.d file rather than
# pg_conftool, which writes 127.0.0.1 unquoted and so breaks postgresql.conf.)
echo "listen_addresses = '127.0.0.1'" >"/etc/postgresql/$VERSION/$CLUSTER/conf.d/tunery-tests.conf"
PORT=$(pg_conftool -s "$VERSION" "$CLUSTER" show port)

STATUS=$(pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c { print $4 }')
if [ "$STATUS" != "online" ]; then
  log "starting cluster $VERSION/$CLUSTER on 127.0.0.1:$PORT"
  pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
else
  # listen_addresses only changes on restart; a running cluster keeps what it had.
  log "cluster $VERSION/$CLUSTER is already running on port $PORT"
fi

for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 -p "$PORT" && break
  sleep 1
done
pg_isready -h 127.0.0.1 -p "$PORT" >&2

psql_admin() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PORT" "$@"; }

psql_admin -d postgres >&2 <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
    CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';
  ELSE
    ALTER ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';
  END IF;
END
\$\$;
SQL
if [ "$(psql_admin -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" != "1" ]; then
  log "creating database $DATABASE"
  psql_admin -d postgres -c "CREATE DATABASE $DATABASE OWNER $ROLE" >&2
fi

log "ready"
echo "export TUNERY_TEST_DATABASE_URL=postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DATABASE"
