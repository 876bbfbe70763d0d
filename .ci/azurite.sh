#!/usr/bin/env bash
# Installs the Azure Storage emulator (Azurite 3, from npm) into a cache outside the clone
# and starts its queue service on 127.0.0.1, for the Azure Queue backend's tests.
# Source it from .ci/run (`. .ci/azurite.sh`): it exports JOB_AZURE_QUEUE, the connection
# string the tests read. Port: AZURITE_PORT, else 10001 unless taken (then the next free).
# Telemetry is off (the emulator would otherwise try to reach a collector on the internet).
set -euo pipefail

azurite_cache="${AZURITE_CACHE:-$HOME/.cache/job-core-azurite}"
azurite_bin="$azurite_cache/node_modules/.bin/azurite-queue"
if [ ! -x "$azurite_bin" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "azurite: installing nodejs and npm"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
  echo "azurite: installing azurite@3 into $azurite_cache"
  mkdir -p "$azurite_cache"
  npm install --prefix "$azurite_cache" --no-audit --no-fund --loglevel=error azurite@3 >/dev/null
fi
export JOB_AZURITE_BIN="$azurite_bin"

port_taken() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
azurite_port="${AZURITE_PORT:-10001}"
while port_taken "$azurite_port"; do azurite_port=$((azurite_port + 1)); done

azurite_dir="$(mktemp -d /tmp/job-core-azurite.XXXXXX)"
"$azurite_bin" --queueHost 127.0.0.1 --queuePort "$azurite_port" --location "$azurite_dir" \
  --skipApiVersionCheck --disableTelemetry --silent >"$azurite_dir/azurite.log" 2>&1 &
echo $! >"$azurite_dir/azurite.pid"
for _ in $(seq 1 100); do port_taken "$azurite_port" && break; sleep 0.1; done
port_taken "$azurite_port" || { echo "azurite: failed to start (see $azurite_dir/azurite.log)"; exit 1; }
export JOB_AZURE_QUEUE="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;QueueEndpoint=http://127.0.0.1:$azurite_port/devstoreaccount1"
echo "azurite: queue service on 127.0.0.1:$azurite_port (data in $azurite_dir, pid $(cat "$azurite_dir/azurite.pid"))"
