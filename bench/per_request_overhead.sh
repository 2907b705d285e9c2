#!/bin/sh
# Per-request server cost: a trivial V2 model (slices 10 of 256 floats) vs the bare
# grpc.aio echo (bench/echo_server.py), same client, same request, side by side.
# Usage: sh bench/per_request_overhead.sh   (from anywhere; uses the repo's .venv)
set -e
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/models/trivial/1"
cat > "$WORK/models/trivial/1/model.py" <<'PYEOF'
from dl_inference import PythonModel


class Trivial(PythonModel):
    def predict(self, inputs):
        return {"output": inputs["input"][:, :10]}
PYEOF
cat > "$WORK/models/trivial/config.yaml" <<'YAMLEOF'
max_batch_size: 32
dynamic_batching: false
inputs: [{name: input, datatype: FP32, shape: [256]}]
outputs: [{name: output, datatype: FP32, shape: [10]}]
YAMLEOF

run_bench() {
    "$PY" -m dl_inference bench --url "grpc://$1" --model trivial --concurrency 8,32 \
        --duration 3 --warmup 1 --quiet --input input:FP32:1,256 2>&1 | grep "^c=" | sed "s/^/$2 /"
}

# Waits for a "gRPC listening on HOST:PORT" line in $1 and prints HOST:PORT.
address_of() {
    for _ in $(seq 1 100); do
        addr=$(grep -o "gRPC listening on [^ ]*" "$1" | head -1 | cut -d" " -f4)
        [ -n "$addr" ] && { echo "$addr"; return; }
        sleep 0.1
    done
    echo "server did not start: $(cat "$1")" >&2
    exit 1
}

"$PY" "$ROOT/bench/echo_server.py" > "$WORK/echo.log" 2>&1 &
pid=$!
run_bench "$(address_of "$WORK/echo.log")" echo
kill $pid; wait $pid 2>/dev/null || true

for level in info warning; do
    "$PY" -m dl_inference serve --model-repository "$WORK/models" --host 127.0.0.1 \
        --grpc-port 0 --http-port 0 --log-level $level > "$WORK/server.log" 2>&1 &
    pid=$!
    run_bench "$(address_of "$WORK/server.log")" "dl-inference(log=$level)"
    kill $pid; wait $pid 2>/dev/null || true
done
