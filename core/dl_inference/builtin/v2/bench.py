"""V2's requests for ``dl-inference bench``: every tensor as raw bytes, the cheapest form.

gRPC: a ``ModelInferRequest`` with the tensors in ``raw_input_contents``. REST: Triton's
binary-tensor extension (a JSON header, then each tensor's bytes), with binary outputs
asked for so that the reply costs the server no JSON either.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from dl_inference.builtin.v2 import SERVICE
from dl_inference.builtin.v2.binary import HEADER_LENGTH
from dl_inference.builtin.v2.codec import array_to_raw
from dl_inference.spi.datatypes import from_numpy_dtype
from dl_inference.spi.protocol import BenchRequest, BenchTransport

INFER_METHOD = f"/{SERVICE}/ModelInfer"


def bench_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    transport: BenchTransport,
    *,
    version: str = "",
    **options: str,
) -> BenchRequest:
    """:meth:`V2Protocol.bench_request <dl_inference.Protocol.bench_request>`: no options."""
    BenchRequest.check_options("v2", options)
    if transport == "grpc":
        return BenchRequest("grpc", INFER_METHOD, v2_grpc_body(model, version, inputs))
    body, headers = v2_rest_body(inputs)
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return BenchRequest("http", path, body, tuple(headers.items()))


def v2_grpc_body(model: str, version: str, inputs: Mapping[str, np.ndarray]) -> bytes:
    """A serialized ModelInferRequest with every tensor in ``raw_input_contents``."""
    from dl_inference._proto import kserve_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, array in inputs.items():
        datatype = from_numpy_dtype(array.dtype)
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(bytes(array_to_raw(array, datatype)))
    return request.SerializeToString()


def v2_rest_body(inputs: Mapping[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """Triton's binary extension: a JSON header followed by each tensor's raw bytes."""
    header: dict[str, Any] = {"inputs": [], "parameters": {"binary_data_output": True}}
    blobs = []
    for name, array in inputs.items():
        datatype = from_numpy_dtype(array.dtype)
        raw = bytes(array_to_raw(array, datatype))
        blobs.append(raw)
        header["inputs"].append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
    head = json.dumps(header).encode()
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return head + b"".join(blobs), headers
