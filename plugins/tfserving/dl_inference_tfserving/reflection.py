"""Descriptors for gRPC server reflection under TF Serving's own names.

Our copy of the TF Serving messages lives in the package ``dl_inference_tfserving.tfs``
and declares no services (the servicer binds generic handlers). Reflection clients
(grpcurl, Postman, ``grpc_reflection``'s descriptor database) need what TF Serving
publishes: the framework messages in package ``tensorflow``, the API messages and the
``PredictionService`` / ``ModelService`` services in ``tensorflow.serving``.
"""

from __future__ import annotations

from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.descriptor_pb2 import FileDescriptorProto

from dl_inference import rename_proto_types
from dl_inference_tfserving._proto import tfs_pb2

# Messages and enums TF keeps in tensorflow/core (package ``tensorflow``).
FRAMEWORK = frozenset(
    {
        "DataType",
        "TensorShapeProto",
        "TensorProto",
        "TensorInfo",
        "SignatureDef",
        "BytesList",
        "FloatList",
        "Int64List",
        "Feature",
        "Features",
        "Example",
    }
)
FRAMEWORK_FILE = "tensorflow/core/framework/dl_inference_tfs_framework.proto"
SERVING_FILE = "tensorflow_serving/apis/dl_inference_tfs_apis.proto"
# service -> [(method, request message, response message)], as TF Serving declares them.
SERVICES = {
    "PredictionService": [
        ("Classify", "ClassificationRequest", "ClassificationResponse"),
        ("Regress", "RegressionRequest", "RegressionResponse"),
        ("Predict", "PredictRequest", "PredictResponse"),
        ("MultiInference", "MultiInferenceRequest", "MultiInferenceResponse"),
        ("GetModelMetadata", "GetModelMetadataRequest", "GetModelMetadataResponse"),
    ],
    "ModelService": [
        ("GetModelStatus", "GetModelStatusRequest", "GetModelStatusResponse"),
        ("HandleReloadConfigRequest", "ReloadConfigRequest", "ReloadConfigResponse"),
    ],
}


def reflection_files() -> list[FileDescriptorProto]:
    """Fresh descriptors: the well-known files ours imports, framework, then the APIs."""
    source = FileDescriptorProto()
    tfs_pb2.DESCRIPTOR.CopyToProto(source)
    ours = f".{source.package}"
    renames = {ours: ".tensorflow.serving"}
    renames.update({f"{ours}.{name}": f".tensorflow.{name}" for name in FRAMEWORK})

    framework = FileDescriptorProto(name=FRAMEWORK_FILE, package="tensorflow", syntax="proto3")
    serving = FileDescriptorProto(
        name=SERVING_FILE,
        package="tensorflow.serving",
        syntax="proto3",
        dependency=[FRAMEWORK_FILE, *source.dependency],
    )
    for message in source.message_type:
        (framework if message.name in FRAMEWORK else serving).message_type.add().CopyFrom(message)
    for enum in source.enum_type:
        (framework if enum.name in FRAMEWORK else serving).enum_type.add().CopyFrom(enum)
    for service_name, methods in SERVICES.items():
        service = serving.service.add(name=service_name)
        for method, request, response in methods:
            service.method.add(
                name=method, input_type=f"{ours}.{request}", output_type=f"{ours}.{response}"
            )
    files = []
    for module in (any_pb2, wrappers_pb2):
        well_known = FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(well_known)
        files.append(well_known)
    for file in (framework, serving):
        rename_proto_types(file, renames)
        files.append(file)
    return files
