"""Triton's model-configuration and statistics extensions: what ``/config`` and ``/stats``
(and gRPC ``ModelConfig`` / ``ModelStatistics``) answer, in Triton's field names and shapes.

One document per answer, built once as JSON (REST's shape: every field present, as Triton
prints them, numbers as numbers); the gRPC answers are parsed from the same document.

The model configuration is the model's ``config.yaml`` (and the server's ``models.<name>``)
seen as Triton's ``config.pbtxt``:

- ``backend``: the dl-inference backend's name (``python``, ``pytorch``, ...); ``platform``
  the backend's platform string when it differs from that name (``pytorch_libtorch``);
- ``input`` / ``output``: the tensors clients send and get (as model metadata shows them),
  ``TYPE_*`` data types (``BYTES`` is ``TYPE_STRING``), ``dims`` without the batch
  dimension when ``max_batch_size > 0``;
- ``version_policy`` from ``version_policy``; ``max_batch_size``; ``dynamic_batching`` when
  the model merges requests (``max_queue_delay_microseconds`` from ``max_queue_delay_ms``,
  ``preferred_batch_size`` its ``max_batch_size``, a ``default_queue_policy`` with
  ``max_queue_size`` and ``timeout_ms`` when set);
- ``instance_group``: one group of ``instances``, ``KIND_GPU`` on a ``cuda`` device else
  ``KIND_CPU``;
- ``parameters``: ``parameters`` as ``string_value`` (non-strings as JSON).

The rest is Triton's defaults: nothing of TensorRT, sequences or warm-up. An ensemble
(platform ``ensemble``) answers as Triton 2.51 answers for one: ``platform: "ensemble"``,
``backend`` empty, its config.pbtxt's ``ensemble_scheduling`` steps (``model_name``,
``model_version``, ``input_map``, ``output_map``), no instance group, no optimization and
``model_transaction_policy {decoupled: false}``: an ensemble has no instances of its own.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from dl_inference._proto import kserve_v2_pb2 as pb
from dl_inference.spi.call_path import ModelControl
from dl_inference.spi.statistics import StatisticDuration, VersionStatistics
from dl_inference.spi.types import ModelVersionInfo, TensorSpec


def repository_elsewhere(management: ModelControl | None) -> str:
    """Why repository calls fail on the main listener, and where to make them instead."""
    what = "the model repository extension (index, load, unload) is not served on this port"
    if management is None:
        return (
            f"{what}: it is served on the management listener, which is off on this server "
            "(management.enabled: false)"
        )
    return (
        f"{what}: call the management listener at {management.grpc_address} (gRPC) or "
        f"{management.http_address} (HTTP), with the management token"
    )


def triton_datatype(datatype: str) -> str:
    """Triton's config data type for a V2 datatype (``FP32`` -> ``TYPE_FP32``)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _dims(spec: TensorSpec, batching: bool) -> list[int]:
    # Metadata shapes lead with the batch dimension (-1) when the model batches;
    # config.pbtxt's dims leave it out.
    shape = list(spec.shape)
    return shape[1:] if batching and shape else shape


def _version_policy(policy: Any) -> dict[str, Any]:
    if policy.all:
        return {"all": {}}
    if policy.specific is not None:
        return {"specific": {"versions": sorted(policy.specific)}}
    return {"latest": {"num_versions": policy.latest or 1}}


def _instance_group(name: str, count: int, device: str) -> dict[str, Any]:
    gpu = device.startswith(("cuda", "gpu"))
    index = device.partition(":")[2]
    return {
        "name": f"{name}_0",
        "kind": "KIND_GPU" if gpu else "KIND_CPU",
        "count": count,
        "gpus": [int(index)] if gpu and index.isdigit() else [],
        "secondary_devices": [],
        "profile": [],
        "passive": False,
        "host_policy": "",
    }


def _parameter(value: Any) -> dict[str, str]:
    return {"string_value": value if isinstance(value, str) else json.dumps(value, default=str)}


def config_document(info: ModelVersionInfo) -> dict[str, Any]:
    """The model configuration of a resolved model version, as Triton's REST prints it."""
    backend = info.backend
    config = backend.config
    batching = config.max_batch_size > 0
    # config.pbtxt's reshape, shown where Triton shows it (only when set)
    reshapes = {
        t.name: {"reshape": {"shape": list(t.reshape)}}
        for t in (config.inputs or []) + (config.outputs or [])
        if t.reshape is not None
    }
    inputs = [
        {
            "name": spec.name,
            "data_type": triton_datatype(spec.datatype),
            "format": "FORMAT_NONE",
            "dims": _dims(spec, batching),
            "is_shape_tensor": False,
            "allow_ragged_batch": False,
            "optional": spec.optional,
            "is_non_linear_format_io": False,
            **reshapes.get(spec.name, {}),
        }
        for spec in backend.inputs() or []
    ]
    outputs = [
        {
            "name": spec.name,
            "data_type": triton_datatype(spec.datatype),
            "dims": _dims(spec, batching),
            "label_filename": "",
            "is_shape_tensor": False,
            "is_non_linear_format_io": False,
            **reshapes.get(spec.name, {}),
        }
        for spec in backend.outputs() or []
    ]
    document: dict[str, Any] = {
        "name": info.name,
        "platform": backend.platform if backend.platform != backend.name else "",
        "backend": backend.name,
        "runtime": "",
        "version_policy": _version_policy(config.version_policy),
        "max_batch_size": config.max_batch_size,
        "input": inputs,
        "output": outputs,
        "batch_input": [],
        "batch_output": [],
        # dl-inference pins no memory and has no priorities: Triton's neutral values.
        "optimization": {
            "priority": "PRIORITY_DEFAULT",
            "input_pinned_memory": {"enable": False},
            "output_pinned_memory": {"enable": False},
            "gather_kernel_buffer_threshold": 0,
            "eager_batching": False,
        },
    }
    if batching and config.dynamic_batching:
        dynamic: dict[str, Any] = {
            "preferred_batch_size": config.preferred_batch_sizes or [config.max_batch_size],
            "max_queue_delay_microseconds": round(config.max_queue_delay_ms * 1000),
            "preserve_ordering": False,
            "priority_levels": 0,
            "default_priority_level": 0,
            "priority_queue_policy": {},
        }
        if config.max_queue_size is not None or config.timeout_ms is not None:
            dynamic["default_queue_policy"] = {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round((config.timeout_ms or 0) * 1000),
                "allow_timeout_override": True,
                "max_queue_size": config.max_queue_size or 0,
            }
        document["dynamic_batching"] = dynamic
    document.update(
        {
            "instance_group": [
                _instance_group(info.name, config.instances, backend.settings.device)
            ],
            "default_model_filename": "",
            "cc_model_filenames": {},
            "metric_tags": {},
            "parameters": {k: _parameter(v) for k, v in config.parameters.items()},
            "model_warmup": [],
        }
    )
    if backend.platform == "ensemble":
        _as_ensemble(document, backend.triton_config() or {})
    return document


def _as_ensemble(document: dict[str, Any], pbtxt: dict[str, Any]) -> None:
    """What Triton's configuration of an ensemble says instead (see the module's doc)."""
    document.update(
        platform="ensemble",
        backend="",
        instance_group=[],
        model_transaction_policy={"decoupled": False},
        ensemble_scheduling={"step": (pbtxt.get("ensemble_scheduling") or {}).get("step", [])},
    )
    document.pop("optimization", None)


def config_message(document: dict[str, Any]) -> pb.ModelConfigResponse:
    """The gRPC ModelConfigResponse of a :func:`config_document`."""
    reply = pb.ModelConfigResponse()
    json_format.ParseDict(document, reply.config)
    return reply


def _duration(value: StatisticDuration) -> dict[str, int]:
    return {"count": value.count, "ns": value.ns}


def statistics_document(stats: list[VersionStatistics]) -> dict[str, Any]:
    """``{"model_stats": [...]}`` as Triton's REST prints it."""
    return {
        "model_stats": [
            {
                "name": s.name,
                "version": s.version,
                "last_inference": s.last_inference,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": _duration(s.success),
                    "fail": _duration(s.fail),
                    "queue": _duration(s.queue),
                    "compute_input": _duration(s.compute_input),
                    "compute_infer": _duration(s.compute_infer),
                    "compute_output": _duration(s.compute_output),
                    # No response cache here: never a hit or a miss.
                    "cache_hit": _duration(StatisticDuration()),
                    "cache_miss": _duration(StatisticDuration()),
                },
                "response_stats": {},
                "batch_stats": [
                    {
                        "batch_size": b.batch_size,
                        "compute_input": _duration(b.compute_input),
                        "compute_infer": _duration(b.compute_infer),
                        "compute_output": _duration(b.compute_output),
                    }
                    for b in s.batch_stats
                ],
                "memory_usage": [],
            }
            for s in stats
        ]
    }


def statistics_message(document: dict[str, Any]) -> pb.ModelStatisticsResponse:
    """The gRPC ModelStatisticsResponse of a :func:`statistics_document`."""
    return json_format.ParseDict(document, pb.ModelStatisticsResponse())
