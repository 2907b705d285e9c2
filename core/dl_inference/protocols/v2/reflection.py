"""Descriptors for gRPC server reflection under the standard ``inference`` package.

Our generated module lives in the package ``dl_inference.v2`` (so it never clashes with
tritonclient's ``inference.*`` in one process); reflection clients must see the standard
names, so the copies handed out here rename the package and every type reference.
"""

from __future__ import annotations

from google.protobuf.descriptor_pb2 import DescriptorProto, FileDescriptorProto

from dl_inference._proto import kserve_v2_pb2 as pb

STANDARD_PACKAGE = "inference"
STANDARD_FILE = "grpc_service.proto"


def _rename(type_name: str, old: str, new: str) -> str:
    return new + type_name[len(old) :] if type_name.startswith(old) else type_name


def _rename_message(message: DescriptorProto, old: str, new: str) -> None:
    for field in message.field:
        if field.type_name:
            field.type_name = _rename(field.type_name, old, new)
    for nested in message.nested_type:
        _rename_message(nested, old, new)


def reflection_files() -> list[FileDescriptorProto]:
    """A fresh FileDescriptorProto of the V2 service, in package ``inference``."""
    file = FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(file)
    old, new = f".{file.package}.", f".{STANDARD_PACKAGE}."
    file.name = STANDARD_FILE
    file.package = STANDARD_PACKAGE
    for message in file.message_type:
        _rename_message(message, old, new)
    for service in file.service:
        for method in service.method:
            method.input_type = _rename(method.input_type, old, new)
            method.output_type = _rename(method.output_type, old, new)
    return [file]
