#!/usr/bin/env bash
# Server-side cost per job on Redis, ours against apalis-redis: Redis CPU time (INFO
# commandstats: usec of EVALSHA/EVAL and of every command a script ran) and the commands per
# job, for the enqueue path (10,000 single enqueues) and for the run path (drain a backlog:
# the fill is measured alone and subtracted). Run after `run.sh` has built the harness.
#
#   benches/peers/redis-cost.sh
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=private-redis.sh
source ./private-redis.sh 16480 peers-redis-cost

# Total Redis usec and calls (scripts and the commands inside them) since the last reset;
# `script_usec` is the time of EVALSHA/EVAL alone (it includes the commands they ran).
cost() {
  cli INFO commandstats | tr -d '\r' | awk -F'[:=,]' '
    /^cmdstat_/ { name=$1; sub("cmdstat_", "", name); calls[name]=$3; usec[name]=$5 }
    END {
      s = usec["evalsha"] + usec["eval"]; n = 0
      for (c in calls) if (c != "evalsha" && c != "eval" && c != "info" && c != "config" && c != "flushall") n += calls[c]
      printf "%d %d %d\n", s, calls["evalsha"] + calls["eval"], n
    }'
}
measure() { # workload impl -> "script_usec scripts commands"
  cli FLUSHALL >/dev/null; cli CONFIG RESETSTAT >/dev/null
  PEERS_JOBS=${3:-100000} "$bin" child "$1" "$2" >/dev/null
  cost
}
printf "%-8s %-28s %12s %14s %12s\n" impl path "usec/job" "scripts/job" "cmds/job"
for impl in ours apalis; do
  read -r su sc cm < <(measure redis-single "$impl" 100000)   # 10,000 enqueues (+1 warm-up)
  awk -v i="$impl" -v su="$su" -v sc="$sc" -v cm="$cm" 'BEGIN { n=10001; printf "%-8s %-28s %12.1f %14.2f %12.1f\n", i, "single enqueue", su/n, sc/n, cm/n }'
  read -r fu fc fm < <(measure redis-batch "$impl" 7000)       # fill 7,000 (+1)
  read -r du dc dm < <(measure redis-drain-7k "$impl" 7000)    # fill + drain
  awk -v i="$impl" -v a="$fu" -v b="$fc" -v c="$fm" -v d="$du" -v e="$dc" -v f="$dm" 'BEGIN { n=7001; printf "%-8s %-28s %12.1f %14.2f %12.1f\n", i, "run (reserve + ack), 7,000", (d-a)/n, (e-b)/n, (f-c)/n }'
  awk -v i="$impl" -v a="$fu" -v b="$fc" -v c="$fm" 'BEGIN { n=7001; printf "%-8s %-28s %12.1f %14.2f %12.1f\n", i, "batched enqueue (1,000), 7,000", a/n, b/n, c/n }'
done
