"""Routing: the gateway's readers pick the model the worker will read, from the same rule.

The worker parses the message (protobuf / json_format) and applies ``routing.model_from``;
the gateway reads the raw bytes. Every case here is checked both ways, so the two can
never drift apart again (first vs last occurrence of a repeated field, merged messages,
unknown fields), and the kernel's gateway gets these readers from the registered
protocol, not from a copy of its own.
"""

from __future__ import annotations

import json
import random
import struct
from typing import Any

import pytest
from google.protobuf import json_format

from dl_inference.gateway import Gateway
from dl_inference.kernel.plugins import PluginHost
from dl_inference.spi.wire import encode_varint, len_field_header
from dl_inference_seldon import codec, routing
from dl_inference_seldon._proto import seldon_pb2 as pb
from dl_inference_seldon.protocol import PREDICT_PATHS, REST_PATH, SeldonProtocol

# -- hand-made wire pieces (field numbers of prediction.proto and struct.proto) ------------


def length(number: int, payload: bytes) -> bytes:
    return len_field_header(number, len(payload)) + payload


def string_value(text: str) -> bytes:
    return length(3, text.encode())


def number_value(number: float) -> bytes:
    return encode_varint(2 << 3 | 1) + struct.pack("<d", number)


def bool_value(flag: bool) -> bytes:
    return encode_varint(4 << 3) + encode_varint(int(flag))


def entry(key: str | None, *values: bytes) -> bytes:
    """One ``meta.tags`` map entry; several values are several occurrences of field 2."""
    body = b"" if key is None else length(1, key.encode())
    return body + b"".join(length(2, value) for value in values)


def meta(*entries: bytes) -> bytes:
    return length(2, b"".join(length(2, e) for e in entries))


DATA = length(3, length(2, encode_varint(1 << 3 | 2) + b"\x00"))  # data.tensor, never read


def worker_reads(body: bytes, metadata: dict[str, str] | None = None) -> str | None:
    """What the worker's Seldon protocol reads: protobuf parsing, then the rule."""
    message = pb.SeldonMessage.FromString(body)
    return routing.model_from(metadata or {}, codec.tags_to_dict(message.meta))


def both(body: bytes, metadata: dict[str, str] | None = None) -> str | None:
    expected = worker_reads(body, metadata)
    assert routing.seldon_routing_key(body, metadata or {}) == expected, body
    return expected


# -- gRPC ----------------------------------------------------------------------------------


def test_reader_on_real_messages() -> None:
    message = pb.SeldonMessage()
    message.data.tensor.values.extend(range(100_000))
    message.meta.tags["model"].string_value = "mnist"
    data = message.SerializeToString()
    assert both(data) == "mnist"
    assert both(data, {"model": "other"}) == "other"  # metadata first
    assert both(data, {"x-model-name": "by-header"}) == "by-header"
    seed = pb.SeldonMessage()
    seed.meta.tags["taskId"].number_value = 39  # the seed's Java client
    assert both(seed.SerializeToString()) == "39"
    assert routing.seldon_routing_key(b"", {"seldon-model": "iris"}) == "iris"
    other = pb.SeldonMessage()
    other.meta.tags["other"].number_value = 1
    assert both(other.SerializeToString()) is None


def test_tag_keys_in_the_workers_order() -> None:
    assert both(meta(entry("model_name", string_value("a")), entry("model", string_value("b"))))
    assert both(meta(entry("taskid", number_value(2)), entry("model_name", string_value("n")))) == (
        "n"
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # A repeated map entry: the last one replaces the whole value, even by a non-name.
        (meta(entry("model", string_value("a")), entry("model", string_value("b"))), "b"),
        (meta(entry("model", string_value("a")), entry("model", bool_value(True))), None),
        (meta(entry("model", string_value("a")), entry("model")), None),
        (
            meta(entry("model", string_value("a"))) + DATA + meta(entry("model", number_value(7))),
            "7",
        ),
        # Two meta fields merge: tags from both, the later entry winning per key.
        (
            meta(entry("model_name", string_value("a"))) + meta(entry("taskid", number_value(3))),
            "a",
        ),
        (meta(entry("taskid", number_value(3))) + meta(entry("model", string_value("m"))), "m"),
        # A value field twice in one entry merges: the last kind set wins.
        (meta(entry("model", string_value("a"), b"")), "a"),
        (meta(entry("model", string_value("a"), number_value(5))), "5"),
        (meta(entry("model", number_value(5), string_value("a"))), "a"),
        (meta(entry("model", string_value("a") + bool_value(False))), None),
        (meta(entry("model", string_value("a") + string_value("b"))), "b"),
        # Unknown fields, and known ones with another wire type, change nothing.
        (meta(entry("model", string_value("a") + encode_varint(9 << 3) + b"\x01")), "a"),
        (meta(entry("model", string_value("a") + encode_varint(3 << 3) + b"\x01")), "a"),
        # A map entry with an unknown field is no entry for Python's protobuf (upb).
        (meta(entry("model", string_value("a")) + encode_varint(7 << 3) + b"\x01"), None),
        (
            meta(
                entry("model", string_value("a")),
                entry("model", string_value("b")) + length(5, b"xy"),
            ),
            "a",
        ),
        (meta(encode_varint(1 << 3) + b"\x01" + entry("model", string_value("a"))), None),
        (meta(entry("model", string_value("a")) + encode_varint(2 << 3) + b"\x01"), None),
        # The key repeated in an entry: the last one.
        (meta(length(1, b"other") + entry("model", string_value("k"))), "k"),
        (meta(entry("model", string_value("k")) + length(1, b"other")), None),
        # Whole numbers without ".0"; fractions as they are.
        (meta(entry("taskId", number_value(29.0))), "29"),
        (meta(entry("model", number_value(1.5))), "1.5"),
        (meta(entry("model", number_value(1e20))), "100000000000000000000"),
        (meta(entry("model", string_value(""))), None),
        (meta(entry("model", string_value("")), entry("model_name", string_value("n"))), "n"),
    ],
)
def test_reader_reads_what_protobuf_parses(body: bytes, expected: str | None) -> None:
    assert both(body) == expected


def test_reader_matches_the_worker_on_seeded_random_messages() -> None:
    pieces = [
        entry(key, *values)
        for key in ("model", "model_name", "taskid", "taskId", "other", None)
        for values in (
            (string_value("a"),),
            (string_value("b"),),
            (number_value(12),),
            (number_value(0.5),),
            (bool_value(True),),
            (),
            (string_value("c"), b""),
            (string_value("d"), number_value(3)),
        )
    ]
    pieces += [
        entry("model", string_value("u")) + encode_varint(7 << 3) + b"\x01",  # dropped entry
        entry("taskid", string_value("v") + encode_varint(9 << 3) + b"\x02"),  # unknown in Value
    ]
    rng = random.Random(13)
    for _ in range(500):
        metas = [meta(*rng.choices(pieces, k=rng.randint(0, 4))) for _ in range(rng.randint(0, 3))]
        body = b"".join(metas)
        if rng.random() < 0.5:
            body = DATA + body if rng.random() < 0.5 else body + DATA
        both(body)


def test_no_name_in_unreadable_or_non_finite_bytes() -> None:
    for body in (b"\x0a\xff\xff", b"\xff\xff\xff", meta(entry("model", b"\x1a\x02\xff\xfe"))):
        assert routing.seldon_routing_key(body, {}) is None
    for number in (float("nan"), float("inf"), -float("inf")):
        assert routing.seldon_routing_key(meta(entry("model", number_value(number))), {}) is None


# -- REST ----------------------------------------------------------------------------------


def rest_both(body: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> str | None:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    message = json_format.Parse(data, pb.SeldonMessage())
    expected = routing.model_from(headers or {}, codec.tags_to_dict(message.meta))
    assert routing.seldon_rest_routing_key(data, headers or {}) == expected, data
    return expected


def test_rest_reader_reads_what_the_worker_parses() -> None:
    untagged = {"data": {"ndarray": [[1.0, 2.0]]}}
    assert rest_both(untagged) is None  # no name: served where it arrived
    assert rest_both(untagged, {"seldon-model": "by-header"}) == "by-header"
    tagged = {"data": {"ndarray": [1]}, "meta": {"tags": {"model": "mnist"}}}
    assert rest_both(tagged) == "mnist"
    assert rest_both(tagged, {"model": "other"}) == "other"  # the header first
    assert rest_both({"meta": {"tags": {"model_name": "a", "model": "b"}}}) == "b"
    assert rest_both({"strData": "x", "meta": {"tags": {"taskId": 29.0, "other": "x"}}}) == "29"
    assert rest_both({"meta": {"tags": {"taskid": 29}}}) == "29"
    assert rest_both({"meta": {"tags": {"model": 1.5}}}) == "1.5"
    # Beyond 2**53 a JSON integer is a double on the worker: the same name both ways.
    assert rest_both(b'{"meta": {"tags": {"taskId": 12345678901234567890}}}') == (
        "12345678901234567168"
    )
    assert rest_both({"meta": {"tags": {"model": True, "model_name": "n"}}}) == "n"
    assert rest_both({"meta": {"tags": {"model": "", "taskid": 4}}}) == "4"
    assert rest_both({"meta": {"tags": {"model": [1], "taskid": {"a": 1}}}}) is None


def test_rest_reader_gives_no_name_for_what_it_cannot_read() -> None:
    reader = routing.seldon_rest_routing_key
    for garbage in (
        b"\xff\xfe",
        b"not json",
        b"[1, 2]",
        b'{"meta": []}',
        b'{"meta": {"tags": 3}}',
        b'{"meta": {"tags": {"model": true}}}',
        b'{"meta": {"tags": {"model": ""}}}',
        b'{"meta": {"tags": {"model": NaN}}}',
        b'{"meta": {"tags": {"model": 1' + b"0" * 400 + b"}}}",
        b"[" * 100_000 + b"]" * 100_000,
    ):
        assert reader(garbage, {}) is None, garbage[:40]


# -- the gateway takes them from the registered protocol ----------------------------------


def test_the_gateway_routes_seldon_by_the_plugins_readers_only() -> None:
    gateway = Gateway([], PluginHost())
    kernel_only = gateway.routing_table([])
    assert not set(PREDICT_PATHS) & set(kernel_only), "the kernel must name no Seldon path"
    table = gateway.routing_table([SeldonProtocol])
    for path in PREDICT_PATHS:
        assert table[path] == ("seldon", routing.seldon_routing_key)
    assert SeldonProtocol().rest_routing_keys() == {REST_PATH: routing.seldon_rest_routing_key}
    # The seed's Seldon methods are routed too, and go upstream under Seldon's own path.
    seed = "/com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService/"
    assert gateway.upstream_table([SeldonProtocol]) == {
        seed + "PytorchPredict": "/seldon.protos.Model/Predict",
        seed + "CaffePredict": "/seldon.protos.Model/Predict",
    }
    assert {seed + "PytorchPredict", seed + "CaffePredict"} <= set(table)
