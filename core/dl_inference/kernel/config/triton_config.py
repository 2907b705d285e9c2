"""Triton's ``config.pbtxt``: read with protobuf's text format against Triton's
``model_config.proto`` (ours, same field numbers) and seen as the kernel's ModelConfig.

A model folder with a ``config.pbtxt`` and no ``config.yaml`` is a Triton model: the
repository reads it here. What maps where:

- ``name``: empty or the folder's name (Triton refuses any other);
- ``backend`` / ``platform``: not a dl-inference backend name; the model registry picks the
  installed backend whose ``triton_platforms`` claims one of them (:func:`triton_names`);
- ``max_batch_size``; ``input`` / ``output`` (``TYPE_FP32`` -> ``FP32``, ``TYPE_STRING`` ->
  ``BYTES``, ``dims`` -> ``shape``, ``reshape.shape`` -> ``reshape``, ``optional``; shape
  tensors and ragged batches are refused);
- ``version_policy`` (``latest`` / ``all`` / ``specific``);
- ``dynamic_batching``: present means the model merges requests, absent means it does not
  (Triton's rule); ``max_queue_delay_microseconds`` -> ``max_queue_delay_ms``,
  ``default_queue_policy.max_queue_size`` -> ``max_queue_size``, ``preferred_batch_size``
  -> ``preferred_batch_sizes``; ``preserve_ordering`` is ignored (logged): every request
  gets its own answer anyway;
- ``instance_group``: the groups' ``count`` summed -> ``instances``; ``KIND_GPU`` -> the
  ``device`` backend option (``cuda:<first of gpus>``), ``KIND_CPU`` -> ``cpu``;
- ``parameters`` (``string_value`` map) -> ``parameters``;
- ``model_warmup`` -> ``warmup`` (``zero_data`` / ``random_data`` inputs; Triton's raw
  ``input_data_file`` is refused);
- ``default_model_filename``, ``runtime`` and ``ensemble_scheduling`` (with ``platform:
  "ensemble"`` only) are left to the backend (read from the document,
  :func:`read_config_pbtxt`).

Any other field set is a load error naming it (``config.pbtxt: sequence_batching is not
supported``), and text protobuf cannot parse is an error with its line and column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
from google.protobuf import json_format, text_format
from pydantic import ValidationError

from dl_inference._proto import model_config_pb2 as mc
from dl_inference.kernel.config.errors import describe_errors
from dl_inference.kernel.config.model_config import ModelConfig
from dl_inference.spi.errors import ConfigError

log = structlog.get_logger("dl_inference.triton_config")

CONFIG_PBTXT = "config.pbtxt"

# Top-level fields the mapping reads (anything else set is refused, naming the field).
_TOP_LEVEL = frozenset(
    {
        "name",
        "platform",
        "backend",
        "max_batch_size",
        "input",
        "output",
        "version_policy",
        "dynamic_batching",
        "instance_group",
        "parameters",
        "default_model_filename",
        "runtime",
        "model_warmup",
        # platform "ensemble": read by the kernel's ensemble backend (builtin/ensemble.py)
        "ensemble_scheduling",
    }
)
# Fields of an input / output read or harmless (FORMAT_* only describes the layout;
# label_filename serves the classification extension, which dl-inference does not have).
_TENSOR_FIELDS = frozenset(
    {"name", "data_type", "dims", "format", "label_filename", "reshape", "optional"}
)
_BATCHING_FIELDS = frozenset(
    {
        "preferred_batch_size",
        "max_queue_delay_microseconds",
        "preserve_ordering",
        "default_queue_policy",
    }
)
_QUEUE_FIELDS = frozenset(
    {"max_queue_size", "timeout_action", "default_timeout_microseconds", "allow_timeout_override"}
)
_GROUP_FIELDS = frozenset({"name", "count", "kind", "gpus"})
# int64 / uint64 fields: protobuf's JSON writes them as strings, Triton's as numbers.
_INT64_KEYS = frozenset(
    {
        "dims",
        "shape",
        "versions",
        "max_queue_delay_microseconds",
        "default_timeout_microseconds",
        "priority_levels",
        "default_priority_level",
        "device_id",
        "model_version",
    }
)


def parse_config_pbtxt(path: Path) -> mc.ModelConfig:
    """The ``config.pbtxt`` at ``path`` as a ModelConfig message, or ConfigError with the
    line and column protobuf stopped at."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the file ({exc})") from None
    message = mc.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        where = f" at line {line}, column {column}" if line is not None else ""
        # protobuf's message repeats the position as "L:C : "; keep only the reason.
        reason = str(exc).split(" : ", 1)[-1] if line is not None else str(exc)
        raise ConfigError(f"{path}: not a valid config.pbtxt{where}: {reason}") from None
    return message


def load_config_pbtxt(
    folder: Path, overrides: dict[str, Any] | None = None
) -> tuple[ModelConfig, tuple[str, ...]]:
    """The model folder's config.pbtxt as the kernel's ModelConfig (merged with the server's
    ``models.<name>`` overrides) and the Triton backend / platform names it gives."""
    path = folder / CONFIG_PBTXT
    message = parse_config_pbtxt(path)
    data = config_mapping(message, folder)
    data.update(overrides or {})
    try:
        config = ModelConfig.from_mapping(data)
    except ValidationError as exc:
        lines = describe_errors(exc, ModelConfig)
        raise ConfigError(
            f"{path}: invalid model configuration:\n  " + "\n  ".join(lines)
        ) from None
    return config, triton_names(message)


def triton_names(message: mc.ModelConfig) -> tuple[str, ...]:
    """The Triton backend and platform a config names (non-empty ones, backend first)."""
    return tuple(n for n in (message.backend, message.platform) if n)


def config_mapping(message: mc.ModelConfig, folder: Path) -> dict[str, Any]:
    """The kernel's config keys (what ModelConfig.from_mapping takes) for ``message``, the
    config.pbtxt of the model folder ``folder``; ConfigError names an unsupported field."""
    where = folder / CONFIG_PBTXT
    _refuse_unknown(message, _TOP_LEVEL, where, "")
    if message.name and message.name != folder.name:
        raise ConfigError(
            f"{where}: name {message.name!r} differs from the model's folder "
            f"{folder.name!r}; Triton refuses that too: rename one of them"
        )
    if not triton_names(message):
        raise ConfigError(
            f'{where}: neither backend nor platform is set; name one, e.g. backend: "python"'
        )
    ensemble = message.platform == "ensemble"
    if ensemble != message.HasField("ensemble_scheduling"):
        raise ConfigError(
            f'{where}: platform "ensemble" and ensemble_scheduling go together (Triton\'s '
            "rule): "
            + ("add the ensemble_scheduling steps" if ensemble else 'set platform: "ensemble"')
        )
    data: dict[str, Any] = {
        "max_batch_size": message.max_batch_size,
        "inputs": [_tensor(t, f"input[{i}]", where) for i, t in enumerate(message.input)],
        "outputs": [_tensor(t, f"output[{i}]", where) for i, t in enumerate(message.output)],
        "dynamic_batching": message.HasField("dynamic_batching"),
    }
    if message.max_batch_size < 0:
        raise ConfigError(f"{where}: max_batch_size must be >= 0 (got {message.max_batch_size})")
    if not data["inputs"]:
        data.pop("inputs")
    if not data["outputs"]:
        data.pop("outputs")
    if message.HasField("version_policy"):
        data["version_policy"] = _version_policy(message.version_policy)
    if message.HasField("dynamic_batching"):
        data.update(_dynamic_batching(message.dynamic_batching, where))
    if message.instance_group:
        data.update(_instance_groups(message, where))
    if message.parameters:
        data["parameters"] = {k: v.string_value for k, v in message.parameters.items()}
    if message.model_warmup:
        data["warmup"] = [
            _warmup(sample, f"model_warmup[{i}]", where)
            for i, sample in enumerate(message.model_warmup)
        ]
    return data


def read_config_pbtxt(folder: Path) -> dict[str, Any]:
    """The model folder's ``config.pbtxt`` as Triton hands it to a model (its JSON form, the
    ``model_config`` argument of a python-backend model's ``initialize``): Triton's field
    names, every field present, numbers as numbers, completed as Triton completes it
    (the name from the folder, default version policy, instance groups, ...)."""
    message = parse_config_pbtxt(folder / CONFIG_PBTXT)
    _complete(message, folder.name)
    return config_document(message)


def count_parameter(parameters: dict[str, Any], key: str) -> int | None:
    """A config.pbtxt ``parameters`` entry that holds a count (a thread count, say; ``0``
    usually meaning the framework's default): its number, or None when it is absent or
    empty. Anything but digits is a ConfigError naming the parameter, which fails the load."""
    value = str(parameters.get(key, "")).strip()
    if not value:
        return None
    if not value.isdigit():
        raise ConfigError(f"config.pbtxt: parameter {key} is {value!r}; use a number >= 0")
    return int(value)


def _complete(message: mc.ModelConfig, name: str) -> None:
    """Fill in what Triton 2.51 fills in before a model sees its configuration: the name,
    the default version policy, ``preferred_batch_size`` (the maximum), instance group
    names and counts (a CPU group when there is none; ``KIND_AUTO`` is ``KIND_CPU``, the
    kernel knowing no GPU) and the default optimization (pinned memory on)."""
    message.name = message.name or name
    if not message.HasField("version_policy"):
        message.version_policy.latest.num_versions = 1
    sizes = message.dynamic_batching.preferred_batch_size  # reading sets no presence
    if message.HasField("dynamic_batching") and not sizes and message.max_batch_size > 0:
        sizes.append(message.max_batch_size)
    if not message.instance_group:
        message.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU)
    for index, group in enumerate(message.instance_group):
        group.name = group.name or f"{message.name}_{index}"
        group.count = group.count or 1
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            group.kind = mc.ModelInstanceGroup.KIND_CPU
    if not message.HasField("optimization"):
        message.optimization.input_pinned_memory.enable = True
        message.optimization.output_pinned_memory.enable = True


def config_document(message: mc.ModelConfig) -> dict[str, Any]:
    """``message`` in Triton's JSON form (see :func:`read_config_pbtxt`)."""
    document = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _numbers(document)


def _numbers(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _numbers(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v, key) for v in value]
    if key in _INT64_KEYS and isinstance(value, str):
        return int(value)
    return value


def _refuse_unknown(message: Any, known: frozenset[str], where: Path, prefix: str) -> None:
    for field, value in message.ListFields():
        if field.name in known:
            continue
        if field.name == "model_transaction_policy" and not value.decoupled:
            continue  # decoupled: false is the default, spelled out
        raise ConfigError(
            f"{where}: {prefix}{field.name} is not supported by dl-inference; remove it "
            "(docs/compatibility.md lists what a config.pbtxt may hold)"
        )


def _tensor(tensor: Any, label: str, where: Path) -> dict[str, Any]:
    _refuse_unknown(tensor, _TENSOR_FIELDS, where, f"{label}.")
    if getattr(tensor, "label_filename", ""):
        log.info("label_filename ignored (no classification extension)", config=str(where))
    if not tensor.name:
        raise ConfigError(f"{where}: {label}.name is empty")
    datatype = _datatype(tensor.data_type, f"{label} ({tensor.name})", where)
    data: dict[str, Any] = {
        "name": tensor.name,
        "datatype": datatype,
        "shape": [int(d) for d in tensor.dims],
    }
    if tensor.HasField("reshape"):
        data["reshape"] = [int(d) for d in tensor.reshape.shape]
    if getattr(tensor, "optional", False):
        data["optional"] = True
    return data


def _datatype(value: int, label: str, where: Path) -> str:
    """The V2 datatype of a config ``DataType`` (``TYPE_STRING`` is ``BYTES``)."""
    data_type = mc.DataType.Name(value)
    if data_type == "TYPE_INVALID":
        raise ConfigError(f"{where}: {label}: data_type is missing")
    if data_type == "TYPE_BF16":
        raise ConfigError(f"{where}: {label}: TYPE_BF16 is not supported")
    return "BYTES" if data_type == "TYPE_STRING" else data_type.removeprefix("TYPE_")


def _warmup(sample: Any, label: str, where: Path) -> dict[str, Any]:
    # Triton's input_data_file is raw tensor bytes in <model>/warmup/; the kernel's warm-up
    # reads .npy files: refused rather than read wrongly.
    inputs = {}
    for name, tensor in sample.inputs.items():
        choice = tensor.WhichOneof("input_data_type")
        if choice not in ("zero_data", "random_data"):
            raise ConfigError(
                f"{where}: {label}.inputs[{name}]: "
                + ("input_data_file" if choice else "a data source")
                + " is not supported by dl-inference; use zero_data or random_data"
            )
        datatype = _datatype(tensor.data_type, f"{label}.inputs[{name}]", where)
        inputs[name] = {"datatype": datatype, "shape": [int(d) for d in tensor.dims], choice: True}
    return {
        "name": sample.name,
        # Triton's defaults: a count of 0 runs the sample once; batch_size 0 is one row.
        "batch_size": sample.batch_size or 1,
        "count": sample.count or 1,
        **({"inputs": inputs} if inputs else {}),
    }


def _version_policy(policy: Any) -> dict[str, Any]:
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return {"all": True}
    if choice == "specific":
        return {"specific": [int(v) for v in policy.specific.versions]}
    return {"latest": policy.latest.num_versions or 1}


def _dynamic_batching(batching: Any, where: Path) -> dict[str, Any]:
    _refuse_unknown(batching, _BATCHING_FIELDS, where, "dynamic_batching.")
    if batching.preserve_ordering:
        log.debug(
            "dynamic_batching.preserve_ordering ignored: each request gets its own answer",
            config=str(where),
        )
    data: dict[str, Any] = {"max_queue_delay_ms": batching.max_queue_delay_microseconds / 1000}
    if batching.preferred_batch_size:
        data["preferred_batch_sizes"] = list(batching.preferred_batch_size)
    if batching.HasField("default_queue_policy"):
        queue = batching.default_queue_policy
        prefix = "dynamic_batching.default_queue_policy."
        _refuse_unknown(queue, _QUEUE_FIELDS, where, prefix)
        if queue.timeout_action == mc.ModelQueuePolicy.DELAY:
            raise ConfigError(f"{where}: {prefix}timeout_action DELAY is not supported")
        if queue.max_queue_size:
            data["max_queue_size"] = queue.max_queue_size
        if queue.default_timeout_microseconds:
            data["timeout_ms"] = queue.default_timeout_microseconds / 1000
    return data


def _instance_groups(message: Any, where: Path) -> dict[str, Any]:
    groups = list(message.instance_group)
    for i, group in enumerate(groups):
        _refuse_unknown(group, _GROUP_FIELDS, where, f"instance_group[{i}].")
        if len(group.gpus) > 1:
            raise ConfigError(
                f"{where}: instance_group[{i}].gpus: one GPU per model is supported "
                f"(got {list(group.gpus)}); run a worker per GPU instead"
            )
    kinds = {mc.ModelInstanceGroup.Kind.Name(g.kind) for g in groups}
    if len(kinds) > 1:
        raise ConfigError(
            f"{where}: instance_group: groups of different kinds ({', '.join(sorted(kinds))}) "
            "are not supported; use one kind"
        )
    gpus = sorted({g.gpus[0] for g in groups if g.gpus})
    if len(gpus) > 1:
        raise ConfigError(
            f"{where}: instance_group: groups on different GPUs {gpus} are not "
            "supported; run a worker per GPU instead"
        )
    # A group without count has Triton's default of one instance.
    data: dict[str, Any] = {"instances": sum(g.count or 1 for g in groups)}
    (kind,) = kinds
    if kind == "KIND_GPU":
        data["device"] = f"cuda:{gpus[0]}" if gpus else "cuda"
    elif kind == "KIND_CPU":
        data["device"] = "cpu"
    return data
