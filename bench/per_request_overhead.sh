#!/bin/sh
# Per-request server cost: a trivial V2 model (slices 10 of 256 floats) vs the bare
# grpc.aio echo (bench/echo_server.py), same client, same request, side by side; req/s
# and the server's CPU time per request.
# Usage: sh bench/per_request_overhead.sh   (from anywhere; uses the repo's .venv)
set -e
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
. "$ROOT/bench/common.sh"
write_trivial_model "$WORK/models"

# run_bench ADDRESS LABEL PID: req/s per concurrency, then the server's CPU per request
# (less sensitive to a noisy machine than req/s).
run_bench() {
    for c in 8 32; do
        before=$(cpu_of "$3")
        "$PY" -m dl_inference bench --url "grpc://$1" --model trivial --concurrency $c \
            --duration 3 --warmup 1 --quiet --input input:FP32:1,256 \
            --json "$WORK/bench.json" > "$WORK/bench.txt" 2>&1
        after=$(cpu_of "$3")
        line=$(grep "^c=" "$WORK/bench.txt")
        "$PY" - "$WORK/bench.json" "$before" "$after" "$2" "$line" <<'PYEOF'
import json, sys
doc = json.load(open(sys.argv[1]))
requests = sum(r["requests"] for r in doc["results"]) or 1
# Warm-up requests also cost CPU: count them at the measured rate.
seconds = doc["duration_s"] + doc["warmup_s"]
cpu_us = (float(sys.argv[3]) - float(sys.argv[2])) * 1e6 / (requests * seconds / doc["duration_s"])
print(f"{sys.argv[4]} {sys.argv[5]}  server CPU {cpu_us:.0f} us/request")
PYEOF
    done
}

"$PY" "$ROOT/bench/echo_server.py" > "$WORK/echo.log" 2>&1 &
pid=$!
run_bench "$(address_of "$WORK/echo.log")" echo $pid
kill $pid; wait $pid 2>/dev/null || true

for level in info warning; do
    "$PY" -m dl_inference serve --model-repository "$WORK/models" --host 127.0.0.1 \
        --grpc-port 0 --http-port 0 --log-level $level > "$WORK/server.log" 2>&1 &
    pid=$!
    run_bench "$(address_of "$WORK/server.log")" "dl-inference(log=$level)" $pid
    kill $pid; wait $pid 2>/dev/null || true
done
