"""Routing: the gateway's readers pick the model the worker will read, from one rule.

The worker parses the request (protobuf) and reads ``model_spec.name``; the gateway reads the
raw bytes, jumping over tensors. Every case here is checked both ways, so the two cannot
drift apart (first vs last occurrence, merged messages, unknown fields), and the kernel's
gateway gets these readers from the registered protocol, not from a copy of its own.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from dl_inference.builtin.v2 import V2Protocol
from dl_inference.gateway import Gateway, RouteConfig
from dl_inference.gateway.rest_forward import BUILTIN_MODEL_PATHS, routed_model
from dl_inference.kernel.plugins import PluginHost
from dl_inference.spi.errors import ConfigError
from dl_inference.spi.wire import encode_varint, len_field_header
from dl_inference_tfserving import codec
from dl_inference_tfserving._proto import tfs_pb2
from dl_inference_tfserving.protocol import (
    MODEL_SERVICE,
    PREDICTION_SERVICE,
    REST_MODEL_PATH,
    ROUTING_KEYS,
    SEED_SERVICE,
    TFServingProtocol,
    model_spec_name,
    multi_inference_name,
)

PREDICT = f"/{PREDICTION_SERVICE}/Predict"
MULTI = f"/{PREDICTION_SERVICE}/MultiInference"
READERS = TFServingProtocol().routing_keys()

# -- hand-made wire pieces (field numbers of TF Serving's apis/*.proto) ---------------------


def length(number: int, payload: bytes) -> bytes:
    return len_field_header(number, len(payload)) + payload


def spec(name: str | bytes | None = None, signature: str = "") -> bytes:
    """A ModelSpec: name = 1, signature_name = 3, version = 2 (Int64Value)."""
    body = b""
    if name is not None:
        body += length(1, name.encode() if isinstance(name, str) else name)
    if signature:
        body += length(3, signature.encode())
    return body + length(2, encode_varint(1 << 3) + encode_varint(7))


def tensor_input(key: str, size: int) -> bytes:
    """A PredictRequest.inputs map entry holding a float tensor of ``size`` zero bytes."""
    proto = codec.from_numpy(np.zeros(size // 4, np.float32)).SerializeToString()
    return length(2, length(1, key.encode()) + length(2, proto))


def worker_reads(body: bytes) -> str | None:
    """What the worker's protocol reads: protobuf parsing; an empty name names no model."""
    return tfs_pb2.PredictRequest.FromString(body).model_spec.name or None


def worker_reads_multi(body: bytes) -> str | None:
    tasks = tfs_pb2.MultiInferenceRequest.FromString(body).tasks
    return (tasks[0].model_spec.name or None) if tasks else None


def both(body: bytes) -> str | None:
    expected = worker_reads(body)
    assert model_spec_name(body, {}) == expected, body
    return expected


# -- the worker's reading, case by case ------------------------------------------------------


def test_real_client_messages_of_every_method() -> None:
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        inference_pb2,
        predict_pb2,
        regression_pb2,
    )

    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = "textcnn-69"
    predict.model_spec.signature_name = "prediction"
    predict.inputs["x"].tensor_content = b"\x00" * 4096
    body = predict.SerializeToString()
    assert READERS[PREDICT](body, {}) == "textcnn-69"
    assert READERS[f"/{SEED_SERVICE}/Predict"](body, {}) == "textcnn-69"
    for method, message in (
        ("Classify", classification_pb2.ClassificationRequest()),
        ("Regress", regression_pb2.RegressionRequest()),
        ("GetModelMetadata", get_model_metadata_pb2.GetModelMetadataRequest()),
    ):
        message.model_spec.name = method.lower()
        path = f"/{PREDICTION_SERVICE}/{method}"
        assert READERS[path](message.SerializeToString(), {}) == method.lower()
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "st"
    assert READERS[f"/{MODEL_SERVICE}/GetModelStatus"](status.SerializeToString(), {}) == "st"
    multi = inference_pb2.MultiInferenceRequest()
    multi.tasks.add().model_spec.name = "census"
    multi.tasks.add().model_spec.name = "other"  # the worker refuses mixed models
    multi.input.example_list.examples.add()
    assert READERS[MULTI](multi.SerializeToString(), {}) == "census"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (length(1, spec("a")), "a"),
        (tensor_input("x", 1 << 16) + length(1, spec("after-tensor")), "after-tensor"),
        # model_spec twice: protobuf merges them, the last name wins...
        (length(1, spec("first")) + length(1, spec("second")), "second"),
        # ...and a later model_spec without a name keeps the earlier one.
        (length(1, spec("kept")) + length(1, spec(None, "sig")), "kept"),
        # the name twice in one model_spec: the last wins.
        (length(1, length(1, b"x") + length(1, b"y")), "y"),
        (length(1, spec("")), None),
        (b"", None),
        (tensor_input("x", 64), None),
        # a name sent with the wrong wire type is an unknown field to protobuf.
        (length(1, encode_varint(1 << 3) + encode_varint(5) + length(1, b"ok")), "ok"),
        (length(1, spec("ok")) + length(99, b"unknown field"), "ok"),
    ],
)
def test_the_reader_reads_what_the_worker_parses(body: bytes, expected: str | None) -> None:
    assert both(body) == expected


def test_multi_inference_reads_the_first_task_as_the_worker_does() -> None:
    task = lambda *specs: length(1, b"".join(length(1, s) for s in specs))  # noqa: E731
    for body, expected in (
        (task(spec("a")) + task(spec("b")), "a"),
        (task(spec("a"), spec("b")), "b"),  # one task, its model_spec merged
        (task(spec(None)) + task(spec("b")), None),
        (b"", None),
    ):
        assert worker_reads_multi(body) == expected
        assert multi_inference_name(body, {}) == expected


def test_unreadable_bodies_name_no_model() -> None:
    # Served where they arrived, whose handler says what is wrong (never routed on a guess).
    for body in (
        b"\x0a\xff",  # a length beyond the end
        b"\x0a\x03\x0a\x01",  # model_spec cut short
        length(1, spec(b"\xff\xfe")),  # not UTF-8
        b"\x0b",  # a group
        b"\x00",  # field number 0
    ):
        assert model_spec_name(body, {}) is None
        assert multi_inference_name(body, {}) is None


def test_seeded_random_requests_agree_with_protobuf() -> None:
    rng = random.Random(1313)
    names = ["", "a", "mnist", "textcnn-69", "\u00e9t\u00e9"]
    for _ in range(500):
        parts = []
        for _ in range(rng.randint(0, 5)):
            kind = rng.random()
            if kind < 0.5:
                parts.append(length(1, spec(rng.choice([*names, None]), rng.choice(["", "s"]))))
            elif kind < 0.8:
                parts.append(tensor_input(rng.choice("xyz"), 4 * rng.randint(0, 64)))
            else:
                parts.append(length(3, rng.choice(names).encode()))  # output_filter
        both(b"".join(parts))


# -- the gateway takes them from the registered protocol ------------------------------------


def test_the_gateway_routes_tf_serving_by_the_plugins_readers_only() -> None:
    kernel = V2Protocol().routing_keys()  # the kernel's only protocol
    assert not set(ROUTING_KEYS) & set(kernel), "the kernel must name no TF Serving path"
    gateway = Gateway([], PluginHost())
    assert not set(ROUTING_KEYS) & set(gateway.routing_table([]))
    table = gateway.routing_table([TFServingProtocol])
    for path, reader in ROUTING_KEYS.items():
        assert table[path] == ("tfserving", reader)
    assert table[MULTI][1] is multi_inference_name


def test_a_gateway_without_the_plugin_says_what_to_install() -> None:
    route = RouteConfig(model="m", protocols=["tfserving"], nodes=[{"address": "h:1"}])
    with pytest.raises(ConfigError, match="pip install dl-inference-tfserving"):
        Gateway([route], PluginHost())  # nothing loaded: only the kernel's names are known


def test_rest_paths_name_the_model_by_the_plugins_prefix() -> None:
    assert TFServingProtocol().rest_model_paths() == (REST_MODEL_PATH,)
    assert routed_model("/v1/models/resnet:predict") is None  # not the kernel's rule
    prefixes = {**BUILTIN_MODEL_PATHS, REST_MODEL_PATH: "tfserving"}
    for path in (
        "/v1/models/resnet",
        "/v1/models/resnet:predict",
        "/v1/models/resnet/metadata",
        "/v1/models/resnet/labels/canary:classify",
        "/v1/models/resnet/versions/2:regress",
    ):
        assert routed_model(path, prefixes) == ("tfserving", "resnet"), path
    assert routed_model("/v1/models/", prefixes) is None
    assert routed_model("/v2/models/resnet/infer", prefixes) == ("v2", "resnet")
