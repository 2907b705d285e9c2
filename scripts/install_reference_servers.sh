#!/bin/sh
# The reference servers the side-by-side tests compare dl-inference with, each in a venv of
# its own under $DLI_REFERENCE_DIR (default .reference/): Seldon Core's Python wrapper
# (seldon-core 1.18.2 pins protobuf<4, so it cannot share our venv) and a real Triton 2.51
# (the C++ server and its python backend, bundled by nvidia-pytriton) and TorchServe 0.12
# with its torch-model-archiver (a Java server: needs a JRE, see install_system_deps.sh)
# and torchvision and captum, which TorchServe's default image handlers import (torch 2.14.1
# with torchvision 0.29.1: a CUDA build that runs on the CPU, about 5.6 GB and 1.5 minutes
# to install; PyPI's torchvision does not import next to torch 2.13). A venv that fails to
# install is left out with a note; the tests that need it skip and say why. A venv is made
# again when the packages asked for change (its .installed marker lists them).
set -e
cd "$(dirname "$0")/.."
DIR=${DLI_REFERENCE_DIR:-.reference}
PY=${PYTHON:-python3}
mkdir -p "$DIR"

install() {
    name=$1; shift
    [ -f "$DIR/$name/.installed" ] && [ "$(cat "$DIR/$name/.installed")" = "$*" ] && return 0
    rm -rf "$DIR/$name"
    if "$PY" -m venv "$DIR/$name" && "$DIR/$name/bin/pip" install -q "$@" >"$DIR/$name.log" 2>&1; then
        echo "$*" >"$DIR/$name/.installed"
    else
        echo "note: could not install the $name reference server (see $DIR/$name.log); the tests comparing with it skip"
    fi
}

# The wrapper's gunicorn imports pkg_resources, which setuptools 81 and later no longer ship.
install seldon seldon-core==1.18.2 "setuptools<81" &
install triton nvidia-pytriton==0.7.0 numpy &
install torchserve torch==2.14.1 torchvision==0.29.1 captum==0.9.0 torchserve==0.12.0 torch-model-archiver==0.12.0 pyyaml numpy &
wait
# Triton's python backend looks for its stub next to the backend; the wheel ships one per
# Python version.
T=$(echo "$DIR"/triton/lib/python3.*/site-packages/pytriton/tritonserver)
if [ -d "$T" ] && [ ! -e "$T/backends/python/triton_python_backend_stub" ]; then
    V=$("$DIR/triton/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    cp "$T/python_backend_stubs/$V/triton_python_backend_stub" "$T/backends/python/"
fi
exit 0
