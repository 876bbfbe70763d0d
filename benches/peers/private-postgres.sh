# Sourced by run.sh: starts a private PostgreSQL cluster (initdb, default settings: fsync
# and synchronous_commit on, as installed servers have them) on the first free port from
# $1, its data in /tmp (the postgres user must own it), stops it on exit, and exports
# PEERS_POSTGRES_URL and PEERS_POSTGRES_PID (its postmaster, whose processes' CPU time
# the harness reads). The shared server on 5432 is never touched.
pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
pg_port=""
for p in $(seq "$1" $(( $1 + 99 ))); do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then pg_port=$p; break; fi
done
[[ -n "$pg_port" ]] || { echo "no free port for postgres" >&2; exit 1; }
pg_data="/tmp/peers-postgres-$pg_port"
as_pg() { if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
rm -rf "$pg_data"
mkdir -p "$pg_data"
[[ "$(id -u)" == 0 ]] && chown postgres "$pg_data"
as_pg "$pg_bin/initdb" -D "$pg_data" -U postgres --auth=trust >/dev/null
as_pg "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_data/log" -w \
  -o "-p $pg_port -k $pg_data -c listen_addresses=127.0.0.1" start >/dev/null
pg_stop() { as_pg "$pg_bin/pg_ctl" -D "$pg_data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$pg_data"; }
export PEERS_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
PEERS_POSTGRES_PID="$(head -1 "$pg_data/postmaster.pid")"
export PEERS_POSTGRES_PID
