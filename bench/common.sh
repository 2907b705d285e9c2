# Shell helpers the bench/*.sh scripts share; source it with `. "$ROOT/bench/common.sh"`.

# write_trivial_model REPOSITORY: a python model "trivial" (the first 10 of 256 floats),
# so what is measured is the server's per-request cost, not the model's.
write_trivial_model() {
    mkdir -p "$1/trivial/1"
    cat > "$1/trivial/1/model.py" <<'PYEOF'
from dl_inference import PythonModel


class Trivial(PythonModel):
    def predict(self, inputs):
        return {"output": inputs["input"][:, :10]}
PYEOF
    cat > "$1/trivial/config.yaml" <<'YAMLEOF'
max_batch_size: 32
dynamic_batching: false
inputs: [{name: input, datatype: FP32, shape: [256]}]
outputs: [{name: output, datatype: FP32, shape: [10]}]
YAMLEOF
}

# cpu_of PID: CPU seconds (user + system, all threads) the process has used so far.
cpu_of() {
    awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$1/stat"
}

# address_of LOG: waits (up to 30 s) for a "gRPC listening on HOST:PORT" line in LOG and
# prints HOST:PORT; exits non-zero with the log when none comes.
address_of() {
    for _ in $(seq 1 300); do
        addr=$(grep -o "gRPC listening on [^ ]*" "$1" | head -1 | cut -d" " -f4)
        [ -n "$addr" ] && { echo "$addr"; return; }
        sleep 0.1
    done
    echo "server did not start: $(cat "$1")" >&2
    exit 1
}
