"""Seldon's requests for ``dl-inference bench --protocol seldon``.

A ``SeldonMessage`` carries one tensor, and names the model in ``meta.tags.model`` (plus
``model_version`` when one is asked for); the request also carries the gRPC metadata / HTTP
header ``model``, so a gateway routes it without reading the body. gRPC
(``/seldon.protos.Seldon/Predict``): the tensor as ``data.tftensor``, TensorFlow's
TensorProto with the data as raw bytes, the cheapest numeric form Seldon has, encoded by
the tfserving plugin's :func:`~dl_inference_tfserving.codec.from_numpy`. REST (``POST
/api/v1.0/predictions``): the JSON form Seldon clients send, ``data.ndarray``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from dl_inference import BenchRequest, BenchTransport, ConfigError, InvalidInput
from dl_inference_seldon import codec
from dl_inference_seldon._proto import seldon_pb2 as pb
from dl_inference_seldon.protocol import REST_PATH, SELDON_SERVICE
from dl_inference_tfserving import codec as tensor_proto

PREDICT_METHOD = f"/{SELDON_SERVICE}/Predict"


def bench_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    transport: BenchTransport,
    *,
    version: str = "",
    **options: str,
) -> BenchRequest:
    """The SeldonMessage for the one tensor in ``inputs``; ConfigError when it cannot be."""
    BenchRequest.check_options("seldon", options)
    if len(inputs) != 1:
        raise ConfigError(
            f"the Seldon protocol carries one tensor per request; this model takes "
            f"{len(inputs)} inputs ({', '.join(inputs)}); benchmark it over --protocol v2"
        )
    array = next(iter(inputs.values()))
    tags = {"model": model, **({"model_version": version} if version else {})}
    if transport == "grpc":
        message = pb.SeldonMessage()
        for key, value in tags.items():
            message.meta.tags[key].string_value = value
        try:
            tensor_proto.from_numpy(array, message.data.tftensor, tensor_content=True)
        except InvalidInput as exc:
            raise ConfigError(f"the seldon protocol cannot carry this input: {exc}") from None
        body = message.SerializeToString()
        return BenchRequest("grpc", PREDICT_METHOD, body, (("model", model),))
    # The JSON writer of this plugin's replies: one rule for a tensor's ndarray form.
    payload = {"data": {"ndarray": codec._to_json(array)}, "meta": {"tags": tags}}
    headers = (("Content-Type", "application/json"), ("model", model))
    return BenchRequest("http", REST_PATH, json.dumps(payload).encode(), headers)
