"""TorchServe's gRPC inference calls through the gateway: ``Predictions`` and
``StreamPredictions`` are routed by ``model_name`` to a worker serving the archive (each
streamed answer passed on as it comes), a model no route names is served by the
gateway's own store, and a reader that agrees with protobuf's parsing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from _ts_archives import write_mar
from dl_inference_torchserve._proto import torchserve_pb2 as pb
from dl_inference_torchserve.protocol import SERVICE, TorchServeProtocol

from dl_inference.gateway import Gateway
from dl_inference.kernel.plugins import PluginHost
from dl_inference.testing import ServerProcess

# Answers name the process that ran them (WHERE), so a test sees which server answered.
STREAMER = """
    import os

    from ts.protocol.otf_message_handler import send_intermediate_predict_response


    def handle(data, context):
        if data is None:
            return None
        count = int((data[0].get("body") or data[0].get("data")).decode())
        for i in range(count):
            send_intermediate_predict_response(
                [f"{os.environ['WHERE']}-{i};" for _ in data], context.request_ids, "ok", 200,
                context,
            )
        return [f"{os.environ['WHERE']}-end" for _ in data]
"""


def _serve(folder: Path, where: str, args: list[str]) -> ServerProcess:
    env = {"DLI_TORCHSERVE_CACHE": str(folder / f"cache-{where}"), "WHERE": where}
    return ServerProcess(args, env=env)


def _until_served(server: ServerProcess, model: str) -> None:
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(server.grpc_address) as channel:
        while True:
            try:
                _call(channel, "Predictions", model, b"0")
                return
            except grpc.RpcError:
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.2)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("torchserve-gateway")
    write_mar(folder / "worker-store", "streamer", {"streamer.py": STREAMER}, "streamer.py")
    # The gateway's own store: a model of the same handler that no route names.
    write_mar(folder / "gateway-store", "local", {"streamer.py": STREAMER}, "streamer.py")
    with _serve(folder, "worker", ["--model-repository", str(folder / "worker-store")]) as worker:
        _until_served(worker, "streamer")
        config = folder / "gateway.yaml"
        routes = [{"model": "streamer", "nodes": [{"address": worker.grpc_address}]}]
        config.write_text(
            yaml.safe_dump({"routes": routes, "model_repository": str(folder / "gateway-store")})
        )
        with _serve(folder, "gateway", ["-c", str(config)]) as gateway:
            _until_served(gateway, "local")
            yield gateway


def _call(channel: grpc.Channel, method: str, model: str, data: bytes) -> list[bytes]:
    """The answers' ``prediction`` bytes: one for ``Predictions``, each streamed one else."""
    request = pb.PredictionsRequest(model_name=model, input={"data": data})
    if method == "Predictions":
        stub = channel.unary_unary(
            f"/{SERVICE}/Predictions",
            request_serializer=pb.PredictionsRequest.SerializeToString,
            response_deserializer=pb.PredictionResponse.FromString,
        )
        return [stub(request, timeout=30).prediction]
    stream = channel.unary_stream(
        f"/{SERVICE}/{method}",
        request_serializer=pb.PredictionsRequest.SerializeToString,
        response_deserializer=pb.PredictionResponse.FromString,
    )
    return [answer.prediction for answer in stream(request, timeout=30)]


def test_stream_predictions_is_routed_by_model_name(gateway: ServerProcess) -> None:
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        # Routed: the worker ran it, every answer streamed back through the gateway.
        assert _call(channel, "StreamPredictions", "streamer", b"3") == [
            b"worker-0;",
            b"worker-1;",
            b"worker-2;",
            b"worker-end",
        ]
        assert _call(channel, "Predictions", "streamer", b"2") == [b"worker-0;"]
        # No route names it: the gateway's own store answers, streamed as well.
        assert _call(channel, "StreamPredictions", "local", b"2") == [
            b"gateway-0;",
            b"gateway-1;",
            b"gateway-end",
        ]
        assert _call(channel, "Predictions", "local", b"0") == [b"gateway-end"]
        # Neither routed nor served: the gateway's own TorchServe answer.
        with pytest.raises(grpc.RpcError) as caught:
            _call(channel, "StreamPredictions", "nowhere", b"1")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_gateway_reads_model_name_as_protobuf_parses_it() -> None:
    table = Gateway([], PluginHost()).routing_table([TorchServeProtocol])
    paths = {f"/{SERVICE}/Predictions", f"/{SERVICE}/StreamPredictions"}
    assert set(table) == paths  # Ping names no model; the management service is not routed
    for path in paths:
        protocol, reader = table[path]
        assert protocol == "torchserve"
        request = pb.PredictionsRequest(model_name="m", model_version="2", input={"x": b"\x00"})
        assert reader(request.SerializeToString(), {}) == "m"
        # A repeated singular field: protobuf keeps the last one.
        twice = (
            request.SerializeToString() + pb.PredictionsRequest(model_name="n").SerializeToString()
        )
        assert pb.PredictionsRequest.FromString(twice).model_name == "n"
        assert reader(twice, {}) == "n"
        assert reader(pb.PredictionsRequest(input={"x": b"1"}).SerializeToString(), {}) is None
        assert reader(b"\x0a\xff", {}) is None  # cut short: no name, served here
