"""The kernel's backend conformance suite, run against the ``onnx`` backend.

Every model is a small graph built with ``onnx.helper``: ``OUTPUT0 = INPUT0 + 1`` (through
a Cast for the integer and FP16 types onnxruntime's CPU ``Add`` does not take), identity
for BOOL and BYTES, and for the failing model a ``Gather`` whose index is out of range at
run time; onnxruntime's error names the node, so the node carries the message the suite
looks for.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from dl_inference.testing import BackendConformance, ModelSpec

ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}
# Types onnxruntime's CPU Add implements; the others go through a wider type and back.
NATIVE_ADD = {
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
}
WIDER = {"FP16": TensorProto.FLOAT}
OPSET = 17
IR_VERSION = 8  # what onnxruntime 1.2x-1.3x all read (onnx's own default may be newer)


def save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def conformance_graph(spec: ModelSpec) -> onnx.GraphProto:
    dims = [None if d == -1 else d for d in spec.full_shape]
    elem = ONNX_TYPES[spec.datatype]
    x = helper.make_tensor_value_info(spec.input_name, elem, dims)
    if spec.fail_with is not None:
        y = helper.make_tensor_value_info(spec.output_name, elem, [1])
        index = helper.make_tensor("index", TensorProto.INT64, [1], [1 << 40])
        node = helper.make_node(
            "Gather", [spec.input_name, "index"], [spec.output_name], name=spec.fail_with
        )
        return helper.make_graph([node], spec.name, [x], [y], initializer=[index])
    y = helper.make_tensor_value_info(spec.output_name, elem, dims)
    if spec.operation == "identity":
        nodes = [helper.make_node("Identity", [spec.input_name], [spec.output_name])]
        return helper.make_graph(nodes, spec.name, [x], [y])
    work = NATIVE_ADD.get(spec.datatype) or WIDER.get(spec.datatype, TensorProto.INT64)
    one = helper.make_tensor("one", work, [], [1])
    if spec.datatype in NATIVE_ADD:
        nodes = [helper.make_node("Add", [spec.input_name, "one"], [spec.output_name])]
    else:
        nodes = [
            helper.make_node("Cast", [spec.input_name], ["wide"], to=work),
            helper.make_node("Add", ["wide", "one"], ["sum"]),
            helper.make_node("Cast", ["sum"], [spec.output_name], to=elem),
        ]
    return helper.make_graph(nodes, spec.name, [x], [y], initializer=[one])


class TestOnnxConformance(BackendConformance):
    backend_name = "onnx"
    supported_datatypes = tuple(ONNX_TYPES)

    def make_model(self, root: Path, spec: ModelSpec) -> None:
        save(conformance_graph(spec), root / spec.name / "1" / "model.onnx")

    def model_options(self, spec: ModelSpec) -> dict[str, object]:
        # 27 sessions on a 2-core CI runner: one thread each keeps them from oversubscribing.
        return {"intra_op_threads": 1}
