"""Descriptors for gRPC server reflection under the standard ``inference`` package.

Our generated module lives in the package ``dl_inference.v2`` (so it never clashes with
tritonclient's ``inference.*`` in one process); reflection clients must see the standard
names, so the copies handed out here rename the package and every type reference.
"""

from __future__ import annotations

from google.protobuf.descriptor_pb2 import FileDescriptorProto

from dl_inference._proto import kserve_v2_pb2 as pb
from dl_inference.spi.protocol import rename_proto_types

STANDARD_PACKAGE = "inference"
STANDARD_FILE = "grpc_service.proto"


def reflection_files() -> list[FileDescriptorProto]:
    """A fresh FileDescriptorProto of the V2 service, in package ``inference``."""
    file = FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(file)
    rename_proto_types(file, {f".{file.package}": f".{STANDARD_PACKAGE}"})
    file.name = STANDARD_FILE
    file.package = STANDARD_PACKAGE
    return [file]
