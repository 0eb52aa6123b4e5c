#!/usr/bin/env bash
# Parquet input against JSON lines in `taxi-worker local`, for docs/development/benchmarks.md: the same
# generated trips as JSON lines and as a Parquet file in the TLC's 2015 layout (written by pyarrow, timestamps
# in microseconds, coordinates as doubles, all the fare columns), each run to its end at full speed with
# 8 shards. Prints both runs' records/s (from --summary) and checks that they give the same results.
# Needs a python with pyarrow in TAXI_TEST_PYTHON, as `eval "$(bash .ci/services.sh start)"` exports it.
# TAXI_WORKER_BIN names a taxi-worker binary to use instead of building the release one.
# Usage: bash bench/parquet_input.sh [TRIPS]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
trips=${1:-1000000}
python=${TAXI_TEST_PYTHON:?set TAXI_TEST_PYTHON to a python with pyarrow: eval \"\$(bash .ci/services.sh start)\"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [[ -n ${TAXI_WORKER_BIN:-} ]]; then
  tw=$TAXI_WORKER_BIN
else
  cargo build --release -q -p taxi-worker
  tw=${CARGO_TARGET_DIR:-target}/release/taxi-worker
fi
$tw generate --trips "$trips" --output "$work/trips.jsonl"
"$python" - "$work/trips.jsonl" "$work/trips.parquet" <<'EOF'
import sys
import pyarrow as pa, pyarrow.json as pj, pyarrow.parquet as pq
table = pj.read_json(sys.argv[1])
names = {"vendor_id": "VendorID", "pickup_datetime": "tpep_pickup_datetime",
         "dropoff_datetime": "tpep_dropoff_datetime", "rate_code": "RateCodeID"}
columns, fields = [], []
for field, column in zip(table.schema, table.columns):
    if field.name in ("type", "trip_id"):
        continue  # a Parquet row's trip id is its row number, as the generator's ids are
    if pa.types.is_timestamp(field.type):
        column = column.cast(pa.timestamp("us"))
    columns.append(column)
    fields.append(names.get(field.name, field.name))
pq.write_table(pa.table(columns, names=fields), sys.argv[2])
EOF
ls -l "$work/trips.jsonl" "$work/trips.parquet" | awk '{print $9 ": " $5 " bytes"}'

for input in trips.jsonl trips.parquet; do
  $tw local --input "$work/$input" --no-dashboard --shards 8 --output "$work/$input.results" \
    --summary "$work/$input.summary" > /dev/null
  "$python" -c 'import json, sys; s = json.load(open(sys.argv[1])); print("%s: %d records in %.2f s, %.0f records/s" % (sys.argv[2], s["records"], s["elapsed_s"], s["events_per_s"]))' \
    "$work/$input.summary" "$input"
done
cmp "$work/trips.jsonl.results" "$work/trips.parquet.results" && echo "same results"
