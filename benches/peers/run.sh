#!/usr/bin/env bash
# Issue 6: job-core against apalis, side by side, in one command.
#
#   benches/peers/run.sh            # everything, 5 rounds (about 15 minutes on 2 cores)
#   PEERS_ROUNDS=3 PEERS_ONLY=mem-phases,mem-concurrent benches/peers/run.sh
#
# Builds the harness in release mode, starts a private redis-server on a free port of
# 127.0.0.1 (no persistence, noeviction; stopped on exit; the shared server on 6379 is never
# touched), prints the machine and versions, then the table (Markdown) on stdout. Progress
# goes to stderr. The table is also kept in benches/peers/target/peers-last.md.
# Set PEERS_NO_REDIS=1 to skip the Redis part. A private PostgreSQL cluster (initdb, default
# settings, stopped on exit) runs the Postgres part; PEERS_NO_POSTGRES=1 skips it.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="$PWD/target"
# Not --locked: job-core is a path dependency whose own dependencies move; the committed
# lock still pins apalis, apalis-redis and redis-rs.
cargo build --release --quiet

work="$CARGO_TARGET_DIR/peers-redis"
mkdir -p "$work"
port=""
pidfile="$work/redis.pid"
cleanup() {
  if declare -F pg_stop >/dev/null; then pg_stop; fi
  if [[ -n "$port" ]]; then
    redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
    if [[ -f "$pidfile" ]]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  fi
}
trap cleanup EXIT

if [[ -z "${PEERS_NO_REDIS:-}" ]]; then
  for p in $(seq 16379 16479); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
  done
  [[ -n "$port" ]] || { echo "no free port in 16379-16479" >&2; exit 1; }
  rm -f "$pidfile"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --maxmemory-policy noeviction --daemonize yes --dir "$work" \
    --pidfile "$pidfile" --logfile "$work/redis.log"
  for _ in $(seq 1 50); do
    redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  export PEERS_REDIS_URL="redis://127.0.0.1:$port/0" PEERS_REDIS_PORT="$port"
fi

if [[ -z "${PEERS_NO_POSTGRES:-}" ]]; then
  # shellcheck source=private-postgres.sh
  source ./private-postgres.sh 15440
fi

version() { awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock; }
{
  echo "## Machine"
  echo
  echo "- cores (nproc): $(nproc); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "- kernel: $(uname -sr); $(rustc -V)"
  echo "- apalis $(version apalis), apalis-core $(version apalis-core), apalis-redis $(version apalis-redis), redis-rs $(version redis), tokio $(version tokio)"
  if [[ -n "$port" ]]; then echo "- $(redis-server --version | cut -d' ' -f1-3) (private, port $port)"; fi
  if [[ -n "${pg_port:-}" ]]; then echo "- $("$pg_bin/postgres" --version) (private cluster, default settings, port $pg_port); apalis-postgres $(version apalis-postgres), sqlx $(version sqlx)"; fi
  echo "- load before: $(uptime | sed 's/.*load average/load average/')"
} | tee "$CARGO_TARGET_DIR/peers-last.md"

"$CARGO_TARGET_DIR/release/peers" run | tee -a "$CARGO_TARGET_DIR/peers-last.md"
echo "- load after: $(uptime | sed 's/.*load average/load average/')" | tee -a "$CARGO_TARGET_DIR/peers-last.md"
