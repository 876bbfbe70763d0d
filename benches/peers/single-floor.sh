#!/usr/bin/env bash
# What bounds a single awaited enqueue on Redis: ours and apalis-redis against the floors
# under any awaited call, interleaved in each round (so each round's figures share the
# machine's state). Run after `run.sh` has built the harness.
#
#   benches/peers/single-floor.sh            # 5 rounds
#   ROUNDS=3 benches/peers/single-floor.sh
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=private-redis.sh
source ./private-redis.sh 16580 peers-single-floor
rate() { "$bin" child "$@" | awk '/^RESULT/ { printf "%.0f", $3 }'; }
c_ping() {
  redis-benchmark -h 127.0.0.1 -p "$port" -c 1 -n 10000 -q PING 2>/dev/null |
    tr '\r' '\n' | awk '/requests per second/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9.]+$/) { printf "%.0f", $i; exit } }'
}
printf '| round | PING, redis-benchmark (C) | PING, tokio socket | PING, redis-rs | trivial script, redis-rs | ours enqueue | apalis-redis push |\n'
printf '|---|---|---|---|---|---|---|\n'
for r in $(seq 1 "${ROUNDS:-5}"); do
  cli FLUSHALL >/dev/null; a=$(c_ping)
  b=$(rate redis-ping-socket raw)
  c=$(rate redis-ping raw)
  cli FLUSHALL >/dev/null; d=$(rate redis-eval-trivial raw)
  cli FLUSHALL >/dev/null; e=$(rate redis-single ours)
  cli FLUSHALL >/dev/null; f=$(rate redis-single apalis)
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$r" "$a" "$b" "$c" "$d" "$e" "$f"
done
