#!/usr/bin/env bash
# A throwaway PostgreSQL server for the sweep tests (tests/vqbench/sweep/test_storage.py).
#
#   eval "$(.ci/postgres.sh)"     # in .ci/run, before pytest
#
# Installs Debian's postgresql when no server binaries are found (unless
# VQBENCH_PG_NO_INSTALL=1), starts a server on 127.0.0.1 on a free port in a temporary
# data folder (as the postgres user when run as root: initdb refuses root), creates the
# database vqbench_test, and prints two export lines on stdout:
#   VQBENCH_TEST_POSTGRES_URL   postgresql://postgres@127.0.0.1:PORT/vqbench_test
#   VQBENCH_TEST_POSTGRES_DATA  the data folder (`pg_ctl -D DATA stop` ends the server)
#   VQBENCH_TEST_PGCTL          pg_ctl for this server, as a command prefix: append `stop -m fast`
#                               or `start` (it carries the data folder, log and start options);
#                               the restart test (tests/vqbench/sweep/test_postgres_restart.py) uses it
# Everything else goes to stderr. Exits non-zero, saying why, if no server could start.
set -euo pipefail

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [[ -x "$d/initdb" ]] && { echo "$d"; return; }; done
  command -v initdb >/dev/null 2>&1 && dirname "$(readlink -f "$(command -v initdb)")"
}

BIN="$(find_bin || true)"
if [[ -z "$BIN" ]]; then
  if [[ "${VQBENCH_PG_NO_INSTALL:-0}" == 1 ]]; then echo "postgres.sh: no PostgreSQL binaries found" >&2; exit 3; fi
  echo "postgres.sh: installing postgresql (apt-get)" >&2
  (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql) >&2
  BIN="$(find_bin)"
fi

DATA="$(mktemp -d "${TMPDIR:-/tmp}/vqbench-pg.XXXXXX")"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
AS=()
if [[ "$(id -u)" == 0 ]]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres >&2
  chown postgres "$DATA"
  AS=(runuser -u postgres --)
fi
"${AS[@]}" "$BIN/initdb" -D "$DATA/db" -A trust -U postgres --no-sync >"$DATA/initdb.log" 2>&1 \
  || { cat "$DATA/initdb.log" >&2; exit 1; }
# fsync off: a test database need not survive a power cut, and it makes trials faster.
PGCTL=("${AS[@]}" "$BIN/pg_ctl" -D "$DATA/db" -l "$DATA/server.log" -w -t 60
       -o "-h 127.0.0.1 -p $PORT -k $DATA -c fsync=off -c max_connections=200")
"${PGCTL[@]}" start >&2 || { cat "$DATA/server.log" >&2; exit 1; }
"${AS[@]}" "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres vqbench_test >&2
echo "postgres.sh: server up on 127.0.0.1:$PORT (data $DATA)" >&2
echo "export VQBENCH_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:$PORT/vqbench_test"
echo "export VQBENCH_TEST_POSTGRES_DATA=$DATA/db"
echo "export VQBENCH_TEST_PGCTL=$(printf '%q' "$(printf '%q ' "${PGCTL[@]}")")"
