"""Tracing end to end: a gateway and a worker (real servers, in subprocesses) export their
spans over OTLP/HTTP, and again over OTLP/gRPC, to a receiver started by the test, which
decodes them with OpenTelemetry's own proto messages; real clients (tritonclient gRPC and
HTTP) send a W3C ``traceparent``. The spans must share the client's trace and chain up:
gateway SERVER -> CLIENT attempt (one per attempt) -> worker SERVER -> queue and compute.
"""

from __future__ import annotations

import gzip
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from dl_inference.testing import ServerProcess, free_port, write_python_model
from dl_inference_otel.settings import PROTOCOLS

MODEL = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""
CONFIG = """
    max_batch_size: 8
    inputs: [{name: x, datatype: FP32, shape: [3]}]
    outputs: [{name: y, datatype: FP32, shape: [3]}]
"""
TIMES_TWO = """
    from dl_inference import InvalidInput, PythonModel

    class TimesTwo(PythonModel):
        def predict(self, inputs, **parameters):
            if (inputs["x"] < 0).any():
                raise InvalidInput("negative input")
            return {"y": inputs["x"] * 2}
"""
# Triton's ensemble: y = times_two(x) + 1, in two steps.
ENSEMBLE = """
name: "twice_plus_one"
platform: "ensemble"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
ensemble_scheduling {
  step [
    {
      model_name: "times_two" model_version: -1
      input_map { key: "x" value: "x" }
      output_map { key: "y" value: "twice" }
    },
    {
      model_name: "add_one" model_version: 1
      input_map { key: "x" value: "twice" }
      output_map { key: "y" value: "y" }
    }
  ]
}
"""
X = np.arange(6, dtype=np.float32).reshape(2, 3)  # a batch of 2 rows
GRPC_METHOD = "inference.GRPCInferenceService/ModelInfer"
OTEL_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
)


class Receiver:
    """An OTLP trace receiver for ``protocol``: OTLP/HTTP (``POST /v1/traces`` with a
    protobuf body) or OTLP/gRPC (``TraceService/Export``)."""

    def __init__(self, protocol: str = "http/protobuf") -> None:
        self.protocol = protocol
        self.spans: list[dict[str, Any]] = []
        self.posts = 0
        self._lock = threading.Lock()
        self.grpc_server: grpc.Server | None = None
        if protocol == "grpc":
            self._serve_grpc()
        else:
            self._serve_http()

    def _serve_grpc(self) -> None:
        receiver = self

        class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(
                self, request: ExportTraceServiceRequest, context: grpc.ServicerContext
            ) -> ExportTraceServiceResponse:
                receiver.add(request)
                return ExportTraceServiceResponse()

        self.grpc_server = grpc.server(ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), self.grpc_server)
        port = self.grpc_server.add_insecure_port("127.0.0.1:0")
        self.grpc_server.start()
        self.url = f"http://127.0.0.1:{port}"  # http://: plaintext gRPC

    def _serve_http(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                receiver.add(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.posts += 1
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            {
                                "service": resource.get("service.name"),
                                "name": span.name,
                                "kind": SpanProto.SpanKind.Name(span.kind),
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "attributes": {a.key: _value(a.value) for a in span.attributes},
                                "error": span.status.code == span.status.STATUS_CODE_ERROR,
                                "start": span.start_time_unix_nano,
                                "end": span.end_time_unix_nano,
                            }
                        )

    def trace(self, trace_id: str, until: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The spans of ``trace_id`` once ``until(spans)`` holds (or what came by the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = [s for s in self.spans if s["trace_id"] == trace_id]
            if until(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)

    def close(self) -> None:
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=None)
            return
        self.server.shutdown()
        self.server.server_close()


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def otel_env(
    receiver: Receiver, service: str, traces_protocol: bool = False, **extra: str
) -> dict[str, str]:
    """The variables that send ``service``'s spans to ``receiver``, in its protocol: named by
    OTEL_EXPORTER_OTLP_PROTOCOL, or with ``traces_protocol`` by the signal's own
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, which wins over a general one naming the other."""
    protocol = {"OTEL_EXPORTER_OTLP_PROTOCOL": receiver.protocol}
    if traces_protocol:
        other = next(p for p in PROTOCOLS if p != receiver.protocol)
        protocol = {
            "OTEL_EXPORTER_OTLP_PROTOCOL": other,
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": receiver.protocol,
        }
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": service,
        **protocol,
        **extra,
    }


@pytest.fixture(scope="module", params=PROTOCOLS)
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    """An OTLP receiver of each protocol in turn: every test here runs over both."""
    r = Receiver(request.param)
    yield r
    r.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("otel_models")
    write_python_model(root, "add_one", MODEL, CONFIG)
    write_python_model(root, "add_one_retried", MODEL, CONFIG)  # behind the retried route
    write_python_model(root, "times_two", TIMES_TWO, CONFIG)
    (root / "twice_plus_one" / "1").mkdir(parents=True)
    (root / "twice_plus_one" / "config.pbtxt").write_text(ENSEMBLE)
    return root


@pytest.fixture(scope="module")
def worker(repo: Path, receiver: Receiver) -> Iterator[ServerProcess]:
    env = otel_env(receiver, "worker", traces_protocol=True)
    with ServerProcess(["--model-repository", str(repo)], env=env) as proc:
        yield proc


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, worker: ServerProcess, receiver: Receiver
) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("otel_gateway")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: an attempt there is retried
    config = folder / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "routes": [
                    {
                        "model": "add_one",
                        "nodes": [
                            {"address": worker.grpc_address, "http_address": worker.http_address}
                        ],
                    },
                    {
                        # Round robin over a dead node and the worker: every other call
                        # tries the dead one first, then the worker.
                        "model": "add_one_retried",
                        "balancer": "round_robin",
                        "nodes": [{"address": dead}, {"address": worker.grpc_address}],
                        "health": {"enabled": False},
                        "ejection": {"consecutive_failures": 100, "slow_start_s": 0},
                    },
                ]
            }
        )
    )
    with ServerProcess(["-c", str(config)], env=otel_env(receiver, "gateway")) as proc:
        yield proc


def traceparent() -> tuple[str, str, str]:
    """(header, trace id, span id) of a sampled client span."""
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def grpc_call(server: ServerProcess, model: str, header: str) -> None:
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        tensor = grpcclient.InferInput("x", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        result = client.infer(
            model, [tensor], headers={"traceparent": header, "tracestate": "vendor=1"}
        )
    np.testing.assert_array_equal(result.as_numpy("y"), X + 1)


def one(spans: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [s for s in spans if all(s[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, spans)
    return found[0]


def has_worker_compute(spans: list[dict[str, Any]]) -> bool:
    return any(s["name"] == "compute" for s in spans)


def complete_through_gateway(spans: list[dict[str, Any]]) -> bool:
    """The worker's compute and the gateway's SERVER span (which ends last, and may come in
    a later export than the worker's) have both arrived."""
    gateway = any(s["service"] == "gateway" and s["kind"] == "SPAN_KIND_SERVER" for s in spans)
    return gateway and has_worker_compute(spans)


def check_worker_spans(
    spans: list[dict[str, Any]], parent: str, name: str, model: str = "add_one"
) -> dict[str, Any]:
    """The worker's SERVER span (child of ``parent``) and its queue / compute children."""
    server = one(spans, service="worker", kind="SPAN_KIND_SERVER")
    assert server["name"] == name
    assert server["parent"] == parent
    attributes = server["attributes"]
    assert attributes["dli.model"] == model
    assert attributes["dli.model_version"] == "1"
    assert attributes["dli.batch_size"] >= 2  # the request's 2 rows, merged or not
    assert attributes["dli.queue_ms"] >= 0
    assert not server["error"]
    queue = one(spans, service="worker", name="queue")
    compute = one(spans, service="worker", name="compute")
    assert queue["parent"] == compute["parent"] == server["span_id"]
    assert compute["attributes"]["dli.batch_size"] == attributes["dli.batch_size"]
    assert server["start"] <= queue["start"] <= queue["end"] <= compute["start"]
    assert compute["end"] <= server["end"]
    return server


def test_a_grpc_call_through_the_gateway_is_one_trace(
    gateway: ServerProcess, worker: ServerProcess, receiver: Receiver
) -> None:
    header, trace_id, client_span = traceparent()
    grpc_call(gateway, "add_one", header)
    spans = receiver.trace(trace_id, complete_through_gateway)

    ours = one(spans, service="gateway", kind="SPAN_KIND_SERVER")
    assert ours["name"] == GRPC_METHOD
    assert ours["parent"] == client_span  # the client's traceparent, read from metadata
    assert ours["attributes"]["rpc.system"] == "grpc"
    assert ours["attributes"]["rpc.service"] == "inference.GRPCInferenceService"
    assert ours["attributes"]["rpc.method"] == "ModelInfer"
    assert ours["attributes"]["dli.model"] == "add_one"
    assert ours["attributes"]["rpc.grpc.status_code"] == 0
    attempt = one(spans, service="gateway", kind="SPAN_KIND_CLIENT")
    assert attempt["parent"] == ours["span_id"]
    assert attempt["attributes"]["server.address"] == "127.0.0.1"
    assert attempt["attributes"]["server.port"] == worker.grpc_port
    assert attempt["attributes"]["dli.attempt"] == 1
    worker = check_worker_spans(spans, attempt["span_id"], GRPC_METHOD)
    assert worker["attributes"]["rpc.system"] == "grpc"
    assert worker["attributes"]["rpc.grpc.status_code"] == 0


def test_an_http_call_through_the_gateway_is_one_trace(
    gateway: ServerProcess, worker: ServerProcess, receiver: Receiver
) -> None:
    header, trace_id, client_span = traceparent()
    with httpclient.InferenceServerClient(gateway.http_address) as client:
        tensor = httpclient.InferInput("x", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X, binary_data=True)
        result = client.infer("add_one", [tensor], headers={"traceparent": header})
    np.testing.assert_array_equal(result.as_numpy("y"), X + 1)
    spans = receiver.trace(trace_id, complete_through_gateway)

    ours = one(spans, service="gateway", kind="SPAN_KIND_SERVER")
    assert ours["parent"] == client_span
    assert ours["name"] == "POST"
    assert ours["attributes"]["http.request.method"] == "POST"
    assert ours["attributes"]["url.path"] == "/v2/models/add_one/infer"
    assert ours["attributes"]["http.response.status_code"] == 200
    attempt = one(spans, service="gateway", kind="SPAN_KIND_CLIENT")
    assert attempt["parent"] == ours["span_id"]
    assert attempt["attributes"]["server.port"] == worker.http_port  # its REST listener
    assert attempt["attributes"]["http.response.status_code"] == 200
    server = check_worker_spans(spans, attempt["span_id"], "POST /v2/models/{name}/infer")
    assert server["attributes"]["http.route"] == "/v2/models/{name}/infer"
    assert server["attributes"]["http.response.status_code"] == 200


def test_a_retried_call_shows_one_client_span_per_attempt(
    gateway: ServerProcess, receiver: Receiver
) -> None:
    traces = []
    for _ in range(2):  # round robin: one of the two calls tries the dead node first
        header, trace_id, _ = traceparent()
        grpc_call(gateway, "add_one_retried", header)
        traces.append(receiver.trace(trace_id, complete_through_gateway))
    retried = [t for t in traces if len([s for s in t if s["kind"] == "SPAN_KIND_CLIENT"]) == 2]
    assert len(retried) == 1, traces
    spans = retried[0]
    ours = one(spans, service="gateway", kind="SPAN_KIND_SERVER")
    assert not ours["error"]
    first = one(spans, kind="SPAN_KIND_CLIENT", error=True)
    second = one(spans, kind="SPAN_KIND_CLIENT", error=False)
    assert first["parent"] == second["parent"] == ours["span_id"]
    assert first["attributes"]["dli.attempt"] == 1
    assert first["attributes"]["rpc.grpc.status_code"] == 14  # UNAVAILABLE: no connection
    assert second["attributes"]["dli.attempt"] == 2
    assert first["end"] <= second["start"]
    # Under the attempt that ran.
    check_worker_spans(spans, second["span_id"], GRPC_METHOD, "add_one_retried")


def test_a_client_error_is_a_failed_server_span(worker: ServerProcess, receiver: Receiver) -> None:
    header, trace_id, client_span = traceparent()
    with grpcclient.InferenceServerClient(worker.grpc_address) as client:
        tensor = grpcclient.InferInput("x", [2, 4], "FP32")  # the model takes 3 per row
        tensor.set_data_from_numpy(np.zeros((2, 4), dtype=np.float32))
        with pytest.raises(Exception, match=r"INVALID_ARGUMENT|shape"):
            client.infer("add_one", [tensor], headers={"traceparent": header})
    spans = receiver.trace(trace_id, lambda s: bool(s))
    server = one(spans, service="worker", kind="SPAN_KIND_SERVER")
    assert server["parent"] == client_span
    assert server["error"]
    assert server["attributes"]["rpc.grpc.status_code"] == 3  # INVALID_ARGUMENT
    assert server["attributes"]["error.type"] == "InvalidInput"


def plugins_json(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "dl_inference", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    ).stdout
    listed = json.loads(out)
    plugins = listed if isinstance(listed, list) else listed["plugins"]
    return next(p for p in plugins if p["name"] == "otel")


def test_without_otel_variables_the_plugin_registers_no_hook(receiver: Receiver) -> None:
    bare = {k: v for k, v in os.environ.items() if k not in OTEL_VARIABLES}
    off = plugins_json(bare)
    assert off["status"] == "loaded"
    assert off["hooks"] == []
    on = plugins_json({**bare, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})
    assert {"dli_on_request", "dli_on_response", "dli_gateway_call"} <= set(on["hooks"])
    for switch in ({"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}):
        assert (
            plugins_json({**bare, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, **switch})["hooks"]
            == []
        ), switch


def test_an_unsupported_protocol_fails_the_plugin_naming_the_variable(receiver: Receiver) -> None:
    bare = {k: v for k, v in os.environ.items() if k not in OTEL_VARIABLES}
    for name in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        env = {**bare, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, name: "http/json"}
        listed = plugins_json(env)
        assert listed["status"] == "failed"
        assert f"{name}=http/json is not supported: use http/protobuf or grpc" in listed["error"]


@pytest.mark.parametrize(
    "switch", [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}], ids=str
)
def test_with_tracing_switched_off_no_span_arrives(
    repo: Path, receiver: Receiver, switch: dict[str, str]
) -> None:
    env = otel_env(receiver, "switched-off", **switch)
    with ServerProcess(["--model-repository", str(repo)], env=env) as proc:
        header, trace_id, _ = traceparent()
        grpc_call(proc, "add_one", header)
        time.sleep(1.0)  # ten export periods
    assert receiver.trace(trace_id, lambda s: False, timeout=0.5) == []
    assert not [s for s in receiver.spans if s["service"] == "switched-off"]


def test_a_stream_through_the_gateway_is_one_trace(
    gateway: ServerProcess, receiver: Receiver
) -> None:
    # ModelStreamInfer: one gateway span and one attempt for the stream, a worker span per
    # message under that attempt.
    header, trace_id, client_span = traceparent()
    answers: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(gateway.grpc_address) as client:
        client.start_stream(
            callback=lambda result, error: answers.put(error or result),
            headers={"traceparent": header},
        )
        for _ in range(2):
            tensor = grpcclient.InferInput("x", list(X.shape), "FP32")
            tensor.set_data_from_numpy(X)
            client.async_stream_infer("add_one", [tensor])
            answer = answers.get(timeout=30)
            np.testing.assert_array_equal(answer.as_numpy("y"), X + 1)
        client.stop_stream()

    def complete(spans: list[dict[str, Any]]) -> bool:
        names = [s["name"] for s in spans]
        return names.count("compute") == 2 and any(s["service"] == "gateway" for s in spans)

    spans = receiver.trace(trace_id, complete)
    ours = one(spans, service="gateway", kind="SPAN_KIND_SERVER")
    assert ours["name"] == "inference.GRPCInferenceService/ModelStreamInfer"
    assert ours["parent"] == client_span
    assert ours["attributes"]["rpc.grpc.status_code"] == 0
    attempt = one(spans, service="gateway", kind="SPAN_KIND_CLIENT")
    assert attempt["parent"] == ours["span_id"]
    workers = [s for s in spans if s["service"] == "worker" and s["kind"] == "SPAN_KIND_SERVER"]
    assert len(workers) == 2
    assert {s["parent"] for s in workers} == {attempt["span_id"]}
    assert {s["name"] for s in workers} == {"inference.GRPCInferenceService/ModelStreamInfer"}


def test_an_ensemble_call_shows_one_span_per_step(
    worker: ServerProcess, receiver: Receiver
) -> None:
    header, trace_id, client_span = traceparent()
    with grpcclient.InferenceServerClient(worker.grpc_address) as client:
        tensor = grpcclient.InferInput("x", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        result = client.infer("twice_plus_one", [tensor], headers={"traceparent": header})
    np.testing.assert_array_equal(result.as_numpy("y"), X * 2 + 1)

    def complete(spans: list[dict[str, Any]]) -> bool:
        return any(s["kind"] == "SPAN_KIND_SERVER" for s in spans)

    spans = receiver.trace(trace_id, complete)
    server = one(spans, kind="SPAN_KIND_SERVER")
    assert server["parent"] == client_span
    assert server["attributes"]["dli.model"] == "twice_plus_one"
    assert not server["error"]
    steps = sorted((s for s in spans if s["name"] == "step"), key=lambda s: s["start"])
    assert [s["parent"] for s in steps] == [server["span_id"]] * 2
    assert [s["attributes"]["dli.model"] for s in steps] == ["times_two", "add_one"]
    for step in steps:
        assert step["attributes"]["dli.model_version"] == "1"
        assert step["attributes"]["dli.batch_size"] == 2  # the request's rows, whole
        assert not step["error"]
        assert server["start"] <= step["start"] <= step["end"] <= server["end"]
        # Each step's own queue and compute, under it.
        compute = one(spans, name="compute", parent=step["span_id"])
        assert compute["attributes"]["dli.batch_size"] == 2
        one(spans, name="queue", parent=step["span_id"])
    assert steps[0]["end"] <= steps[1]["start"]  # the second reads the first's output
    # The ensemble's own execution, beside its steps.
    ensemble_compute = one(spans, name="compute", parent=server["span_id"])
    assert ensemble_compute["start"] <= steps[0]["start"]


def test_a_failed_ensemble_step_is_a_failed_step_span(
    worker: ServerProcess, receiver: Receiver
) -> None:
    header, trace_id, _ = traceparent()
    with grpcclient.InferenceServerClient(worker.grpc_address) as client:
        tensor = grpcclient.InferInput("x", list(X.shape), "FP32")
        tensor.set_data_from_numpy(-X - 1)
        with pytest.raises(Exception, match="negative input"):
            client.infer("twice_plus_one", [tensor], headers={"traceparent": header})
    spans = receiver.trace(trace_id, lambda s: any(x["kind"] == "SPAN_KIND_SERVER" for x in s))
    server = one(spans, kind="SPAN_KIND_SERVER")
    assert server["error"]
    assert server["attributes"]["rpc.grpc.status_code"] == 3  # INVALID_ARGUMENT, the step's
    step = one(spans, name="step")  # the second step never ran
    assert step["parent"] == server["span_id"]
    assert step["attributes"]["dli.model"] == "times_two"
    assert step["error"]
    assert step["attributes"]["error.type"] == "InvalidInput"
