"""A tiny TF Serving look-alike that is NOT dl-inference, for gateway tests.

``python fake_tfserving.py --name A [--port N] [--delay-ms N] [--no-health]`` serves
``tensorflow.serving.PredictionService/Predict`` and ``GetModelMetadata`` with the real
tensorflow_serving.apis messages, and ``/fake.Upstream/Stats`` (JSON). Predict returns
``y = 2 * x`` plus what it saw: the sha256 of the exact request bytes, the remaining
deadline, the metadata and its own name. Prints ``listening on PORT`` when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

PREFIX = "/tensorflow.serving.PredictionService/"


def float_tensor(values: np.ndarray) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in values.shape]
        ),
        tensor_content=values.astype(np.float32).tobytes(),
    )


def string_tensor(text: str) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]
        ),
        string_val=[text.encode()],
    )


class Upstream:
    def __init__(self, name: str, delay_s: float) -> None:
        self.name = name
        self.delay_s = delay_s
        self.stats = {"predict": 0, "cancelled": 0, "models": {}}

    async def predict(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = predict_pb2.PredictRequest.FromString(body)
        model = request.model_spec.name
        self.stats["predict"] += 1
        self.stats["models"][model] = self.stats["models"].get(model, 0) + 1
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        remaining = context.time_remaining()
        delay = float(metadata.get("x-sleep-ms", 0)) / 1000 or self.delay_s
        if delay:
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                self.stats["cancelled"] += 1
                raise
        if "x" not in request.inputs:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model {model!r} needs an input named 'x' (float32); got {sorted(request.inputs)}",
            )
        tensor = request.inputs["x"]
        shape = [d.size for d in tensor.tensor_shape.dim]
        if tensor.tensor_content:
            x = np.frombuffer(tensor.tensor_content, dtype=np.float32).reshape(shape)
        else:
            x = np.asarray(tensor.float_val, dtype=np.float32).reshape(shape)
        context.set_trailing_metadata((("x-upstream-name", self.name),))
        reply = predict_pb2.PredictResponse()
        reply.model_spec.name = model
        reply.outputs["y"].CopyFrom(float_tensor(x * 2))
        reply.outputs["node"].CopyFrom(string_tensor(self.name))
        reply.outputs["sha256"].CopyFrom(string_tensor(hashlib.sha256(body).hexdigest()))
        reply.outputs["time_remaining"].CopyFrom(
            float_tensor(np.array([-1.0 if remaining is None else remaining]))
        )
        reply.outputs["metadata"].CopyFrom(string_tensor(json.dumps(metadata, sort_keys=True)))
        return reply.SerializeToString()

    async def metadata(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = get_model_metadata_pb2.GetModelMetadataRequest.FromString(body)
        reply = get_model_metadata_pb2.GetModelMetadataResponse()
        reply.model_spec.name = request.model_spec.name
        return reply.SerializeToString()

    async def seldon(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # Echo the SeldonMessage as received: the client checks every byte came through.
        self.stats["seldon"] = self.stats.get("seldon", 0) + 1
        context.set_trailing_metadata((("x-upstream-name", self.name),))
        return body

    async def get_stats(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return json.dumps(self.stats).encode()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0)
    parser.add_argument("--no-health", action="store_true")
    args = parser.parse_args()
    upstream = Upstream(args.name, args.delay_ms / 1000)
    server = grpc.aio.server()
    raw = grpc.unary_unary_rpc_method_handler
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "tensorflow.serving.PredictionService",
                {"Predict": raw(upstream.predict), "GetModelMetadata": raw(upstream.metadata)},
            ),
            grpc.method_handlers_generic_handler(
                "fake.Upstream", {"Stats": raw(upstream.get_stats)}
            ),
            grpc.method_handlers_generic_handler(
                "seldon.protos.Seldon", {"Predict": raw(upstream.seldon)}
            ),
        ]
    )
    if not args.no_health:
        servicer = health.aio.HealthServicer()
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    print(f"listening on {port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
