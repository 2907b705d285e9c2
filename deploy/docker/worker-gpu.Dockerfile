# syntax=docker/dockerfile:1
# dl-inference worker for NVIDIA GPU nodes: CUDA torch and onnxruntime-gpu.
#
#   docker build -f deploy/docker/worker-gpu.Dockerfile -t dl-inference/worker-gpu:0.2.0 .
#   docker run --rm --gpus all -p 8500:8500 -v $PWD/models:/models:ro \
#       dl-inference/worker-gpu:0.2.0 --model-repository /models
#
# Models choose the GPU in their config.yaml (`device: cuda`). torch 2.13.0 on PyPI and
# onnxruntime-gpu 1.31 are both CUDA 13 / cuDNN 9 builds, so they share this base's CUDA
# major; the host needs an NVIDIA driver new enough for CUDA 13 (R580 or later).
# onnxruntime-gpu is installed for the onnx plugin. The pytorch plugin needs the seldon
# plugin, which needs tfserving (neither is on PyPI); both protocols need no framework.

ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ARG DEBIAN_FRONTEND=noninteractive
# Ubuntu's python3 follows the base tag's release; pinning its patch version would break
# the build at every security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
# torch first and exact: PyPI's Linux wheel of 2.13.0 is the CUDA 13.0 build.
# Its own layer, so that a change to the sources does not download torch again.
# hadolint ignore=DL3059
RUN pip install torch==2.13.0 "onnxruntime-gpu==1.31.*"
COPY requirements/constraints.txt /src/requirements/constraints.txt
COPY pyproject.toml README.md /src/
COPY core /src/core
COPY plugins /src/plugins
ARG PLUGINS="seldon tfserving pytorch onnx"
# Word splitting of $targets is wanted: one argument per package folder.
# hadolint ignore=SC2086
RUN set -eu; \
    targets="/src"; \
    for p in ${PLUGINS}; do \
        test -f "/src/plugins/$p/pyproject.toml" || { echo "no plugin plugins/$p in the build context" >&2; exit 1; }; \
        targets="$targets /src/plugins/$p"; \
    done; \
    pip install -c /src/requirements/constraints.txt $targets; \
    pip check

FROM ${CUDA_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# Ubuntu's python3 follows the base tag's release; pinning its patch version would break
# the build at every security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN groupadd --system --gid 10001 dli \
    && useradd --system --uid 10001 --gid dli --create-home --home-dir /home/dli dli \
    && mkdir /models && chown dli:dli /models
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/dli
EXPOSE 8500 8501
# grpc.health.v1 on the whole server ("" = every model loaded and not draining).
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os,sys,grpc;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as g;c=grpc.insecure_channel(os.environ.get('DLI_HEALTH_ADDRESS','127.0.0.1:8500'));s=g.HealthStub(c).Check(h.HealthCheckRequest(service=''),timeout=3).status;sys.exit(0 if s==h.HealthCheckResponse.SERVING else 1)"]
ENTRYPOINT ["dl-inference", "serve"]
