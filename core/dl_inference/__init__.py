"""dl-inference: a deep-learning inference service built as a pluggy microkernel.

Everything a plugin may use is re-exported here and listed in ``__all__``; every other
module is private and may change without notice.
"""

# A module, not names: routing-key readers call ``wire.iter_fields`` etc. by that prefix.
from dl_inference import wire
from dl_inference.kernel.config.errors import describe_errors
from dl_inference.kernel.config.model_config import ModelConfig, TensorConfig, VersionPolicy
from dl_inference.kernel.config.triton_config import count_parameter, read_config_pbtxt
from dl_inference.kernel.plugins import install_hint
from dl_inference.kernel.processor import ProcessorAdapter
from dl_inference.spi.backend import Backend, BackendSettings, ModelRunner
from dl_inference.spi.balancer import Balancer, NodeView, Outcome
from dl_inference.spi.call_path import (
    Call,
    CallPath,
    HttpRequest,
    ModelControl,
    RuntimeView,
    json_error_body,
    read_body,
)
from dl_inference.spi.converter import Converter
from dl_inference.spi.datatypes import DATATYPES, from_numpy_dtype, to_numpy_dtype
from dl_inference.spi.errors import (
    BackendError,
    ConfigError,
    DeadlineExceeded,
    DlInferenceError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    PermissionDenied,
    PluginError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from dl_inference.spi.hookspecs import HOOKSPEC_VERSION, hookimpl
from dl_inference.spi.json_body import MAX_JSON_DEPTH, read_json, utf8_bytes
from dl_inference.spi.protocol import (
    BenchRequest,
    BenchTransport,
    Protocol,
    RoutingKeyReader,
    rename_proto_types,
)
from dl_inference.spi.python_model import PythonModel
from dl_inference.spi.registry import (
    BackendRegistry,
    BalancerRegistry,
    ConverterRegistry,
    ProtocolRegistry,
)
from dl_inference.spi.seed_names import task_id_of, without_task_id
from dl_inference.spi.statistics import BatchStatistics, StatisticDuration, VersionStatistics
from dl_inference.spi.status import grpc_code, http_status, public_message
from dl_inference.spi.tensor_limits import (
    MAX_TENSOR_ELEMENTS,
    MAX_TENSOR_RANK,
    check_raw_size,
    check_tensor_shape,
    check_value_count,
)
from dl_inference.spi.typed_values import (
    array_from_json,
    json_datatype,
    json_leaves,
    narrow_array,
)
from dl_inference.spi.types import (
    AttemptTrace,
    Decision,
    ExecutionTiming,
    ForwardTrace,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelVersionInfo,
    RequestContext,
    StepExecution,
    TensorSpec,
)
from dl_inference.spi.user_code import import_user_file, isolated_imports

__version__ = "0.2.0"

__all__ = [
    "DATATYPES",
    "HOOKSPEC_VERSION",
    "MAX_JSON_DEPTH",
    "MAX_TENSOR_ELEMENTS",
    "MAX_TENSOR_RANK",
    "AttemptTrace",
    "Backend",
    "BackendError",
    "BackendRegistry",
    "BackendSettings",
    "Balancer",
    "BalancerRegistry",
    "BatchStatistics",
    "BenchRequest",
    "BenchTransport",
    "Call",
    "CallPath",
    "ConfigError",
    "Converter",
    "ConverterRegistry",
    "DeadlineExceeded",
    "Decision",
    "DlInferenceError",
    "ExecutionTiming",
    "ForwardTrace",
    "HttpRequest",
    "InferRequest",
    "InferResponse",
    "InvalidInput",
    "ModelConfig",
    "ModelControl",
    "ModelMetadata",
    "ModelNotFound",
    "ModelNotReady",
    "ModelRunner",
    "ModelVersionInfo",
    "NodeView",
    "Outcome",
    "PayloadTooLarge",
    "PermissionDenied",
    "PluginError",
    "ProcessorAdapter",
    "Protocol",
    "ProtocolRegistry",
    "PythonModel",
    "RequestContext",
    "ResourceExhausted",
    "RoutingKeyReader",
    "RuntimeView",
    "StatisticDuration",
    "StepExecution",
    "TensorConfig",
    "TensorSpec",
    "Unauthenticated",
    "Unavailable",
    "VersionPolicy",
    "VersionStatistics",
    "__version__",
    "array_from_json",
    "check_raw_size",
    "check_tensor_shape",
    "check_value_count",
    "count_parameter",
    "describe_errors",
    "from_numpy_dtype",
    "grpc_code",
    "hookimpl",
    "http_status",
    "import_user_file",
    "install_hint",
    "isolated_imports",
    "json_datatype",
    "json_error_body",
    "json_leaves",
    "narrow_array",
    "public_message",
    "read_body",
    "read_config_pbtxt",
    "read_json",
    "rename_proto_types",
    "task_id_of",
    "to_numpy_dtype",
    "utf8_bytes",
    "wire",
    "without_task_id",
]
