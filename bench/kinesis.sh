#!/usr/bin/env bash
# Kinesis benchmarks against the local emulator (kinesis-mock), figures for docs/development/benchmarks.md:
#  1. replay rate: N generated trips into an 8-shard stream as fast as possible (--speedup 0);
#  2. run rate: `taxi-worker run` reading that stream back to idle, 8 shards;
#  3. the reference architecture's scenario: replay a day at speedup 6480 into 8 shards while a worker reads it,
#     sampling the worst millis_behind_latest from /metrics.
# The emulator (single-threaded Node) is slower than the worker; the worker's own per-record cost
# is `cargo bench -p taxi-core --bench hot_path`.
# Usage: bash bench/kinesis.sh [TRIPS] [SCENARIO_TRIPS]   (defaults 20000 and 20000)
set -euo pipefail
cd "$(dirname "$0")/.."
trips=${1:-20000}
scenario_trips=${2:-20000}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# shellcheck source=SCRIPTDIR/../.ci/services.sh
source .ci/services.sh
trap 'services_stop_all; kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
services_start_all
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
export TAXI_KINESIS_ENDPOINT_URL=$TAXI_TEST_KINESIS_ENDPOINT

cargo build --release -q -p taxi-worker
tw=target/release/taxi-worker
$tw generate --trips "$trips" --output "$work/trips.jsonl"

stream=bench-$RANDOM$RANDOM
echo "== replay: $trips trips into 8 shards, --speedup 0"
$tw replay --input "$work/trips.jsonl" --stream "$stream" --create-stream 8 --speedup 0
echo "== run: read the stream back, 8 shards"
$tw run --pipeline bench --stream "$stream" --checkpoint "file://$work/ckpt" --sink "file://$work/partials.jsonl" \
  --stop-when-idle 2s --http-addr 127.0.0.1:0 --shard-discovery-interval 1s 2>&1 | grep -E "^stopped"
echo "   (the idle wait of 2 s and start-up are included in the elapsed time)"

echo "== the reference architecture's scenario: a day of $scenario_trips trips at speedup 6480 into 8 shards, read live"
$tw generate --trips "$scenario_trips" --seed 7 --output "$work/day.jsonl"
live=live-$RANDOM$RANDOM
port_file="$work/run.err"
$tw run --pipeline live --stream "$live" --checkpoint "file://$work/ckpt-live" --sink "file://$work/live.jsonl" \
  --stop-when-idle 5s --http-addr 127.0.0.1:0 --shard-discovery-interval 1s 2>"$port_file" &
worker=$!   # it retries ListShards until the replay below has created the stream
( $tw replay --input "$work/day.jsonl" --stream "$live" --create-stream 8 >"$work/replay.out" 2>&1 ) &
replayer=$!
addr=""
for _ in $(seq 100); do
  addr=$(grep -o 'http://[0-9.:]*' "$port_file" | head -1 | sed 's|http://||' || true)
  [[ -n "$addr" ]] && break
  sleep 0.1
done
worst=0
samples=0
while kill -0 "$replayer" 2>/dev/null; do
  m=$( (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}"; printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3; cat <&3) 2>/dev/null \
      | grep '^taxi_millis_behind_latest' | awk '{print $2}' | sort -n | tail -1 || true)
  if [[ -n "$m" ]]; then
    samples=$((samples + 1))
    ((m > worst)) && worst=$m
  fi
  sleep 0.2
done
cat "$work/replay.out"
wait "$worker" || true
grep -E "^stopped" "$port_file" || true
echo "worst millis_behind_latest over $samples samples (every 200 ms during the replay): $worst ms"
