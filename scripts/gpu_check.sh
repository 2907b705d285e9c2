#!/usr/bin/env bash
# The prepared GPU check (issue 17). On a machine with an NVIDIA GPU and no internet (its
# python3 with torch, numpy, pytest, setuptools preinstalled) it installs dl-inference and
# its plugins with the wheels carried in .whl/, runs the GPU tests, then bench/gpu_side_by_side.py
# (dl-inference vs the bundled Triton 2.51, the models on the GPU), and writes under $OUT
# (default /tmp/gpu-check): environment.txt, gpu_tests.log, gpu_side_by_side.md and .json.
#
#   scripts/gpu_check.sh --wheels    # first, where pip reaches PyPI: fills .whl/ (git-ignored)
#   scripts/gpu_check.sh --dry-run   # prints the plan and what is missing; runs nothing
#   scripts/gpu_check.sh             # on the GPU machine; without a GPU it says so and exits 0
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
PY=${PYTHON:-python3}
PYVER=${GPU_CHECK_PYTHON_VERSION:-3.12}  # the GPU machine's Python: its wheels, Triton's stub
SITE=/tmp/gpu-check-site
TRITON=/tmp/gpu-check-triton/pytriton/tritonserver
WHL=.whl
TRITON_TAR=$WHL/tritonserver-2.51-py$PYVER.tar.xz
# The kernel's dependencies the GPU image lacks or may hold too old, pinned as in CI's venv.
WHEELS="pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 structlog==26.1.0 grpcio==1.85.3 grpcio-health-checking==1.81.1
  grpcio-reflection==1.81.1 protobuf==6.33.6 pytest==9.2.0 pluggy==1.7.0 pytest-asyncio==1.5.0"
PACKAGES=". ./plugins/seldon ./plugins/tfserving ./plugins/pytorch ./plugins/onnx"
TORCH_TESTS="plugins/pytorch/tests/test_pytorch_backend.py plugins/pytorch/tests/test_pytorch_eager.py"
ONNX_TESTS=plugins/onnx/tests/test_gpu.py
SIDE_BY_SIDE="bench/gpu_side_by_side.py --out $OUT --device cuda:0 --duration 3 --warmup 1"

fetch_wheels() {
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")" "$WHL"
    grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    set -- --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
    # shellcheck disable=SC2086
    "$PY" -m pip download -q "$@" -d "$WHL" $WHEELS
    # Triton: the nvidia-pytriton wheel is 55 MB; to keep what travels to the GPU machine small,
    # keep only the server, its python backend, this Python's stub and the libraries they load.
    tmp=$(mktemp -d)
    "$PY" -m pip download -q "$@" -d "$tmp" nvidia-pytriton==0.7.0
    "$PY" - "$tmp"/nvidia_pytriton-*.whl "$TRITON_TAR" "$PYVER" <<'EOF'
import io, sys, tarfile, zipfile
wheel, out, version = sys.argv[1:]
keep = ("pytriton/tritonserver/bin/", "pytriton/tritonserver/backends/",
        f"pytriton/tritonserver/python_backend_stubs/{version}/", "nvidia_pytriton.libs/")
with zipfile.ZipFile(wheel) as z, tarfile.open(out, "w:xz") as tar:
    for info in z.infolist():
        # libpython3*: the 3.13 stub's; the stub kept links the machine's own libpython.
        if info.filename.startswith(keep) and "/libpython3" not in info.filename:
            item = tarfile.TarInfo(info.filename)
            item.size, item.mode = info.file_size, (info.external_attr >> 16) & 0o777 or 0o644
            tar.addfile(item, io.BytesIO(z.read(info)))
EOF
    rm -rf "$tmp"
    du -sh "$WHL"
}

plan() {
    cat <<EOF
gpu_check plan (results under $OUT):
  1. GPU: nvidia-smi -L, and $PY's torch.cuda.is_available(); without one: say so, exit 0
  2. install: $PY -m pip install --no-index --no-deps --no-build-isolation --target $SITE
       $WHL/*.whl $PACKAGES   (PYTHONPATH=$SITE)
  3. Triton 2.51: unpack $TRITON_TAR into ${TRITON%/pytriton/*}, the $PYVER stub into its python backend
  4. GPU tests: pytest -k cuda $TORCH_TESTS; pytest $ONNX_TESTS  > $OUT/gpu_tests.log
  5. side by side: $PY $SIDE_BY_SIDE --triton $TRITON
       > $OUT/gpu_side_by_side.md and .json
EOF
    have() { if [ -e "$1" ]; then echo "present"; else echo "MISSING ($2)"; fi; }
    echo "  wheels in $WHL/: $(have "$WHL" 'scripts/gpu_check.sh --wheels')"
    echo "  Triton archive: $(have "$TRITON_TAR" 'scripts/gpu_check.sh --wheels')"
    if gpu_reason >/dev/null; then echo "  GPU: none here ($(gpu_reason))"; else echo "  GPU: present"; fi
}

gpu_reason() {  # prints why there is no usable GPU and succeeds; fails when there is one
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
        echo "nvidia-smi is missing or finds no GPU"
    elif ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
        echo "$PY's torch sees no CUDA device"
    else
        return 1
    fi
}

case "${1:-}" in
--wheels) fetch_wheels; exit 0 ;;
--dry-run) plan; exit 0 ;;
"") ;;
*) echo "usage: scripts/gpu_check.sh [--wheels | --dry-run]" >&2; exit 2 ;;
esac

if reason=$(gpu_reason); then
    echo "gpu_check: no GPU to check on this machine ($reason): nothing to run"
    exit 0
fi
if ! ls "$WHL"/*.whl >/dev/null 2>&1; then
    echo "gpu_check: no wheels in $WHL/: run scripts/gpu_check.sh --wheels where pip reaches PyPI" >&2
    exit 2
fi
mkdir -p "$OUT"
{
    nvidia-smi
    "$PY" -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, "CUDA", torch.version.cuda)'
    libdir=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))")
    ls "$libdir"/libpython3* 2>/dev/null || ldconfig -p | grep -F "libpython$PYVER" ||
        echo "no libpython$PYVER.so: Triton's python stub cannot start"
} >"$OUT/environment.txt" 2>&1
echo "== install"
# shellcheck disable=SC2086
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "$WHL"/*.whl $PACKAGES
export PYTHONPATH=$SITE PATH=$SITE/bin:$PATH PYTHONUNBUFFERED=1
triton=()
if [ -f "$TRITON_TAR" ]; then
    mkdir -p "${TRITON%/pytriton/*}" && tar -xJf "$TRITON_TAR" -C "${TRITON%/pytriton/*}"
    cp "$TRITON/python_backend_stubs/$PYVER/triton_python_backend_stub" "$TRITON/backends/python/"
    triton=(--triton "$TRITON")
else
    echo "note: no $TRITON_TAR: dl-inference only"
fi
echo "== GPU tests"
status=0
# Only the plugin these tests use: the image's own pytest plugins may not fit the carried pytest.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
pytest=("$PY" -m pytest -q -p no:cacheprovider -p pytest_asyncio.plugin)
# shellcheck disable=SC2086
"${pytest[@]}" -k cuda $TORCH_TESTS >"$OUT/gpu_tests.log" 2>&1 || status=$?
"${pytest[@]}" "$ONNX_TESTS" >>"$OUT/gpu_tests.log" 2>&1 || status=$?
grep -E "passed|failed|skipped|error" "$OUT/gpu_tests.log" | tail -n 4
echo "== side by side"
# shellcheck disable=SC2086
"$PY" $SIDE_BY_SIDE "${triton[@]}"
exit "$status"
