# Sourced by redis-cost.sh and single-floor.sh: checks the harness is built (sets `bin`),
# starts a private redis-server (no persistence) on the first free port from $1 with its
# files in target/$2, stops it on exit, and exports PEERS_REDIS_URL and PEERS_REDIS_PORT.
# Defines `cli`, redis-cli on that server.
bin="$PWD/target/release/peers"
[[ -x "$bin" ]] || { echo "build first: benches/peers/run.sh (or cargo build --release)" >&2; exit 1; }
work="$PWD/target/$2"
mkdir -p "$work"
port=""
for p in $(seq "$1" $(( $1 + 99 ))); do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
done
[[ -n "$port" ]] || { echo "no free port" >&2; exit 1; }
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
  --dir "$work" --pidfile "$work/redis.pid" --logfile "$work/redis.log"
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
export PEERS_REDIS_URL="redis://127.0.0.1:$port/0" PEERS_REDIS_PORT="$port"
cli() { redis-cli -h 127.0.0.1 -p "$port" "$@"; }
