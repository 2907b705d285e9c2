#!/bin/sh
# The two gRPC engines side by side (server.grpc.engine: grpcio | asyncio): the bare echo
# (bench/echo_server.py), dl-inference with a trivial model and with the MLP (batching on,
# one torch thread), alternated engine by engine for REPEAT rounds; req/s and the server's
# CPU time per request at concurrency C (default 32) with `dl-inference bench`.
# Usage: sh bench/grpc_engines.sh   (REPEAT=2 C=32 DURATION=4; uses the repo's .venv)
set -e
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
C=${C:-32}
DURATION=${DURATION:-4}
REPEAT=${REPEAT:-2}
. "$ROOT/bench/common.sh"
write_trivial_model "$WORK/models"
"$PY" -c "
import sys; sys.path.insert(0, '$ROOT/bench')
from pathlib import Path
import models
models.make_models(Path('$WORK/torch'))
models.write_repository(Path('$WORK/models'), Path('$WORK/torch'), batching=True)
"
export BENCH_TORCH_THREADS=1

# measure LABEL MODEL PID ADDRESS: one closed-loop point, then req/s and CPU per request.
measure() {
    before=$(cpu_of "$3")
    "$PY" -m dl_inference bench --url "grpc://$4" --model "$2" --concurrency "$C" \
        --duration "$DURATION" --warmup 0 --quiet --input input:FP32:1,256 \
        --json "$WORK/bench.json" > "$WORK/bench.txt" 2>&1
    after=$(cpu_of "$3")
    "$PY" - "$WORK/bench.json" "$before" "$after" "$1" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))["results"][-1]
cpu = (float(sys.argv[3]) - float(sys.argv[2])) * 1e6 / max(r["requests"], 1)
print(f"{sys.argv[4]:28s} {r['req_per_s']:8.0f} req/s  p99 {r['latency_ms']['p99']:6.1f} ms"
      f"  server CPU {cpu:5.0f} us/request  errors {r.get('errors', 0)}")
PYEOF
}

for round in $(seq 1 "$REPEAT"); do
    for engine in grpcio asyncio; do
        "$PY" "$ROOT/bench/echo_server.py" --engine $engine > "$WORK/echo.log" 2>&1 &
        pid=$!
        measure "echo/$engine" trivial $pid "$(address_of "$WORK/echo.log")"
        kill $pid; wait $pid 2>/dev/null || true
    done
    for model in trivial mlp; do
        for engine in grpcio asyncio; do
            DLI_GRPC_ENGINE=$engine "$PY" -m dl_inference serve \
                --model-repository "$WORK/models" --host 127.0.0.1 --grpc-port 0 \
                --http-port 0 --log-level warning > "$WORK/server.log" 2>&1 &
            pid=$!
            address=$(address_of "$WORK/server.log")
            measure "$model/$engine" $model $pid "$address"
            kill $pid; wait $pid 2>/dev/null || true
        done
    done
done
