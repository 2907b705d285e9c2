"""Descriptors for gRPC server reflection under the standard ``inference`` package.

Our generated modules live in the package ``dl_inference.v2`` (so they never clash with
tritonclient's ``inference.*`` in one process); reflection clients must see the standard
names, so the copies handed out here rename the package, every type reference and the
file names (``grpc_service.proto`` imports ``model_config.proto``, as Triton's does).
"""

from __future__ import annotations

from google.protobuf.descriptor_pb2 import FileDescriptorProto

from dl_inference._proto import kserve_v2_pb2 as pb
from dl_inference._proto import model_config_pb2
from dl_inference.spi.protocol import rename_proto_types

STANDARD_PACKAGE = "inference"
STANDARD_FILE = "grpc_service.proto"
STANDARD_CONFIG_FILE = "model_config.proto"


def reflection_files() -> list[FileDescriptorProto]:
    """Fresh FileDescriptorProtos of the V2 service and its model configuration, in package
    ``inference``; the one imported comes first."""
    names = {
        model_config_pb2.DESCRIPTOR.name: STANDARD_CONFIG_FILE,
        pb.DESCRIPTOR.name: STANDARD_FILE,
    }
    files = []
    for module in (model_config_pb2, pb):
        file = FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file)
        rename_proto_types(file, {f".{file.package}": f".{STANDARD_PACKAGE}"})
        file.name = names[file.name]
        file.dependency[:] = [names.get(d, d) for d in file.dependency]
        file.package = STANDARD_PACKAGE
        files.append(file)
    return files
