"""rename_proto_types: the helper protocol plugins use to publish standard names."""

from __future__ import annotations

from google.protobuf.descriptor_pb2 import FieldDescriptorProto, FileDescriptorProto

from dl_inference import rename_proto_types


def test_the_longest_enclosing_name_wins_and_others_stay() -> None:
    file = FileDescriptorProto(name="x.proto", package="ours")
    message = file.message_type.add(name="Request")
    for number, type_name in enumerate(
        [".ours.Feature", ".ours.Features", ".ours.Features.Entry", ".ours.Spec", ".other.T"],
        start=1,
    ):
        message.field.add(
            name=f"f{number}",
            number=number,
            type=FieldDescriptorProto.TYPE_MESSAGE,
            type_name=type_name,
        )
    message.nested_type.add(name="Inner").field.add(name="g", number=1, type_name=".ours.Spec")
    method = file.service.add(name="S").method.add(
        name="Call", input_type=".ours.Request", output_type=".ours.Feature"
    )
    rename_proto_types(file, {".ours": ".std.api", ".ours.Feature": ".std.Feature"})
    assert [f.type_name for f in message.field] == [
        ".std.Feature",  # the type's own entry beats the package's
        ".std.api.Features",  # a longer name that merely starts alike is not enclosed
        ".std.api.Features.Entry",
        ".std.api.Spec",
        ".other.T",  # no entry: unchanged
    ]
    assert message.nested_type[0].field[0].type_name == ".std.api.Spec"
    assert (method.input_type, method.output_type) == (".std.api.Request", ".std.Feature")
