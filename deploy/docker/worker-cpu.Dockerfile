# syntax=docker/dockerfile:1
# dl-inference worker for CPU nodes: the kernel + the pytorch and tensorflow plugins, and
# the protocol plugins they depend on (seldon for pytorch, tfserving for tensorflow).
#
#   docker build -f deploy/docker/worker-cpu.Dockerfile -t dl-inference/worker-cpu:0.2.0 .
#   docker run --rm -p 8500:8500 -p 8501:8501 dl-inference/worker-cpu:0.2.0        # demo models
#   docker run --rm -p 8500:8500 -v $PWD/models:/models:ro dl-inference/worker-cpu:0.2.0 \
#       --model-repository /models
#
# Build from the repository root: the context must hold pyproject.toml, core/ and plugins/.
# Pick other in-repo plugins with --build-arg PLUGINS="seldon tfserving pytorch balancers";
# list the in-repo plugins a chosen one depends on too (pytorch needs seldon, seldon and
# tensorflow need tfserving): they are not on PyPI.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# torch first, exact, from the CPU-only index: the pytorch plugin only asks for torch>=2.4,
# and left to resolve that range on PyPI pip would pull the multi-GB CUDA build.
# Its own layer, so that a change to the sources does not download torch again.
# hadolint ignore=DL3059
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY requirements/constraints.txt /src/requirements/constraints.txt
COPY pyproject.toml README.md /src/
COPY core /src/core
COPY plugins /src/plugins
ARG PLUGINS="seldon tfserving pytorch tensorflow"
# Non-editable installs: the runtime stage copies /opt/venv only, not the sources.
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

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A fixed numeric id, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
RUN groupadd --system --gid 10001 dli \
    && useradd --system --uid 10001 --gid dli --create-home --home-dir /home/dli dli \
    && mkdir /models && chown dli:dli /models
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/dli
EXPOSE 8500 8501
# grpc.health.v1 on the whole server ("" = every model loaded and not draining).
# DLI_HEALTH_ADDRESS points it elsewhere when --grpc-port is not 8500.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os,sys,grpc;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as g;c=grpc.insecure_channel(os.environ.get('DLI_HEALTH_ADDRESS','127.0.0.1:8500'));s=g.HealthStub(c).Check(h.HealthCheckRequest(service=''),timeout=3).status;sys.exit(0 if s==h.HealthCheckResponse.SERVING else 1)"]
# With no arguments the built-in demo repository is served; pass serve's flags as arguments.
ENTRYPOINT ["dl-inference", "serve"]
