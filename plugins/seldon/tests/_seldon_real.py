"""Seldon Core's messages under their real names (``seldon.protos``, ``tensorflow``), declared
by hand from the published prediction.proto / tensor.proto field numbers and types.

They live in a private descriptor pool, so they never meet the default pool where our
generated ``dl_inference_seldon.seldon`` messages (or a real client library) register.
Tests encode with these and decode with ours (and the other way round) to prove that the
two agree on the wire.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

F = descriptor_pb2.FieldDescriptorProto


def _field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    kind: int,
    *,
    type_name: str = "",
    repeated: bool = False,
    oneof: int | None = None,
) -> None:
    field = message.field.add(name=name, number=number, type=kind)
    field.label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
    if type_name:
        field.type_name = type_name
    if oneof is not None:
        field.oneof_index = oneof


def _tensorflow_file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="tensorflow/core/framework/tensor.proto", package="tensorflow", syntax="proto3"
    )
    dtype = file.enum_type.add(name="DataType")
    for name, number in (("DT_INVALID", 0), ("DT_FLOAT", 1), ("DT_INT64", 9), ("DT_STRING", 7)):
        dtype.value.add(name=name, number=number)
    shape = file.message_type.add(name="TensorShapeProto")
    dim = shape.nested_type.add(name="Dim")
    _field(dim, "size", 1, F.TYPE_INT64)
    _field(dim, "name", 2, F.TYPE_STRING)
    _field(
        shape, "dim", 2, F.TYPE_MESSAGE, type_name=".tensorflow.TensorShapeProto.Dim", repeated=True
    )
    tensor = file.message_type.add(name="TensorProto")
    _field(tensor, "dtype", 1, F.TYPE_ENUM, type_name=".tensorflow.DataType")
    _field(tensor, "tensor_shape", 2, F.TYPE_MESSAGE, type_name=".tensorflow.TensorShapeProto")
    _field(tensor, "tensor_content", 4, F.TYPE_BYTES)
    _field(tensor, "float_val", 5, F.TYPE_FLOAT, repeated=True)
    _field(tensor, "string_val", 8, F.TYPE_BYTES, repeated=True)
    _field(tensor, "int64_val", 10, F.TYPE_INT64, repeated=True)
    return file


def _seldon_file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="proto/prediction.proto", package="seldon.protos", syntax="proto3"
    )
    file.dependency.extend(
        ["google/protobuf/struct.proto", "tensorflow/core/framework/tensor.proto"]
    )
    message = file.message_type.add(name="SeldonMessage")
    message.oneof_decl.add(name="data_oneof")
    _field(message, "status", 1, F.TYPE_MESSAGE, type_name=".seldon.protos.Status")
    _field(message, "meta", 2, F.TYPE_MESSAGE, type_name=".seldon.protos.Meta")
    _field(message, "data", 3, F.TYPE_MESSAGE, type_name=".seldon.protos.DefaultData", oneof=0)
    _field(message, "binData", 4, F.TYPE_BYTES, oneof=0)
    _field(message, "strData", 5, F.TYPE_STRING, oneof=0)
    _field(message, "jsonData", 6, F.TYPE_MESSAGE, type_name=".google.protobuf.Value", oneof=0)

    data = file.message_type.add(name="DefaultData")
    data.oneof_decl.add(name="data_oneof")
    _field(data, "names", 1, F.TYPE_STRING, repeated=True)
    _field(data, "tensor", 2, F.TYPE_MESSAGE, type_name=".seldon.protos.Tensor", oneof=0)
    _field(data, "ndarray", 3, F.TYPE_MESSAGE, type_name=".google.protobuf.ListValue", oneof=0)
    _field(data, "tftensor", 4, F.TYPE_MESSAGE, type_name=".tensorflow.TensorProto", oneof=0)

    tensor = file.message_type.add(name="Tensor")
    _field(tensor, "shape", 1, F.TYPE_INT32, repeated=True)
    _field(tensor, "values", 2, F.TYPE_DOUBLE, repeated=True)

    meta = file.message_type.add(name="Meta")
    _field(meta, "puid", 1, F.TYPE_STRING)
    entry = meta.nested_type.add(name="TagsEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, F.TYPE_STRING)
    _field(entry, "value", 2, F.TYPE_MESSAGE, type_name=".google.protobuf.Value")
    _field(
        meta, "tags", 2, F.TYPE_MESSAGE, type_name=".seldon.protos.Meta.TagsEntry", repeated=True
    )

    status = file.message_type.add(name="Status")
    flag = status.enum_type.add(name="StatusFlag")
    flag.value.add(name="SUCCESS", number=0)
    flag.value.add(name="FAILURE", number=1)
    _field(status, "code", 1, F.TYPE_INT32)
    _field(status, "info", 2, F.TYPE_STRING)
    _field(status, "reason", 3, F.TYPE_STRING)
    _field(status, "status", 4, F.TYPE_ENUM, type_name=".seldon.protos.Status.StatusFlag")
    return file


def real_messages() -> dict[str, Any]:
    """Message classes by full name: ``seldon.protos.SeldonMessage``, ``seldon.protos.Status``."""
    pool = descriptor_pool.DescriptorPool()
    struct_file = descriptor_pb2.FileDescriptorProto()
    struct_pb2.DESCRIPTOR.CopyToProto(struct_file)
    for file in (struct_file, _tensorflow_file(), _seldon_file()):
        pool.Add(file)
    names = ("seldon.protos.SeldonMessage", "seldon.protos.Status")
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name)) for name in names
    }
