# syntax=docker/dockerfile:1
# dl-inference gateway: the kernel, the balancers plugin and the framework-free protocol
# plugins whose routing readers it needs (seldon, tfserving); no torch, no TensorFlow.
# It forwards request bytes by model name and never decodes tensors, so it stays small.
#
#   docker build -f deploy/docker/gateway.Dockerfile -t dl-inference/gateway:0.2.0 .
#   docker run --rm -p 8500:8500 -v $PWD/gateway.yaml:/etc/dl-inference/config.yaml:ro \
#       dl-inference/gateway:0.2.0

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY requirements/constraints.txt /src/requirements/constraints.txt
COPY pyproject.toml README.md /src/
COPY core /src/core
COPY plugins/balancers /src/plugins/balancers
COPY plugins/seldon /src/plugins/seldon
COPY plugins/tfserving /src/plugins/tfserving
RUN pip install -c /src/requirements/constraints.txt /src /src/plugins/balancers \
        /src/plugins/seldon /src/plugins/tfserving \
    && pip check

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 dli \
    && useradd --system --uid 10001 --gid dli --create-home --home-dir /home/dli dli
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/dli
EXPOSE 8500 8501
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os,sys,grpc;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as g;c=grpc.insecure_channel(os.environ.get('DLI_HEALTH_ADDRESS','127.0.0.1:8500'));s=g.HealthStub(c).Check(h.HealthCheckRequest(service=''),timeout=3).status;sys.exit(0 if s==h.HealthCheckResponse.SERVING else 1)"]
ENTRYPOINT ["dl-inference", "serve"]
CMD ["-c", "/etc/dl-inference/config.yaml"]
