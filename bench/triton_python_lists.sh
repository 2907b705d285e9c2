#!/bin/sh
# A Triton python model whose execute() runs ONE vectorised numpy op over every request it
# gets (np.concatenate, tanh(x @ W), split back): served with dynamic_batching, execute()
# gets the queued requests as a list (Backend.takes_request_lists); served without it,
# one request per execute (what every execute got before request lists). Same model file,
# same client (dl-inference bench, V2 gRPC, one DIM-float row a request); req/s per
# concurrency, the ratio, and the server's CPU per request.
# Usage: sh bench/triton_python_lists.sh   (from anywhere; uses the repo's .venv and the
# dl-inference-triton plugin installed in it)
# Settings (environment): DIM (features, W is DIM x DIM; default 1024), DELAY_US (the
# listed model's max_queue_delay_microseconds; default 0), CONCURRENCY ("8 32"), DURATION (5).
set -e
DIM=${DIM:-1024}
DELAY_US=${DELAY_US:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
. "$ROOT/bench/common.sh"

for name in listed one_each; do
    mkdir -p "$WORK/models/$name/1"
    cat > "$WORK/models/$name/1/model.py" <<'PYEOF'
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        dim = int(json.loads(args["model_config"])["input"][0]["dims"][0])
        self.w = np.random.default_rng(0).standard_normal((dim, dim), dtype=np.float32)

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, "X").as_numpy() for r in requests]
        y = np.tanh(np.concatenate(xs) @ self.w)  # one op for the whole list
        parts = np.split(y, np.cumsum([len(x) for x in xs])[:-1])
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", p)]) for p in parts]
PYEOF
    cat > "$WORK/models/$name/config.pbtxt" <<PBEOF
backend: "python"
max_batch_size: 32
input [ { name: "X" data_type: TYPE_FP32 dims: [ $DIM ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ $DIM ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
PBEOF
done
echo "dynamic_batching { max_queue_delay_microseconds: $DELAY_US }" \
    >> "$WORK/models/listed/config.pbtxt"

# One BLAS thread: OpenBLAS's own threads would spin on the two cores the front end needs
# (a 32-row product took 150x a 1-row one here with its default threads).
OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 \
    "$PY" -m dl_inference serve --model-repository "$WORK/models" --host 127.0.0.1 \
    --grpc-port 0 --http-port 0 --log-level warning > "$WORK/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$WORK"' EXIT
addr=$(address_of "$WORK/server.log")

for c in ${CONCURRENCY:-8 32}; do
    for model in one_each listed; do
        before=$(cpu_of $pid)
        "$PY" -m dl_inference bench --url "grpc://$addr" --model $model --concurrency "$c" \
            --duration "${DURATION:-5}" --warmup 1 --quiet --input "X:FP32:1,$DIM" \
            --json "$WORK/$model.json" > "$WORK/bench.txt" 2>&1
        after=$(cpu_of $pid)
        "$PY" - "$WORK/$model.json" "$before" "$after" "$model" "$c" <<'PYEOF'
import json, sys
doc = json.load(open(sys.argv[1]))
requests = sum(r["requests"] for r in doc["results"]) or 1
seconds = doc["duration_s"] + doc["warmup_s"]
cpu_us = (float(sys.argv[3]) - float(sys.argv[2])) * 1e6 / (requests * seconds / doc["duration_s"])
rate = requests / doc["duration_s"]
print(f"c={sys.argv[5]} {sys.argv[4]:9} {rate:8.0f} req/s  server CPU {cpu_us:.0f} us/request")
PYEOF
    done
done
