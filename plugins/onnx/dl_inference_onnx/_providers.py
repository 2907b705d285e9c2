"""Execution providers: what a model's settings ask for, what this machine can give.

onnxruntime-gpu lists ``CUDAExecutionProvider`` and ``TensorrtExecutionProvider`` in
``get_available_providers()`` whenever they were compiled in, GPU or not. Whether one
really runs is known only after the session exists: onnxruntime then quietly leaves out
a provider it could not start (no device, CUDA/cuDNN/TensorRT libraries missing). So the
plan is checked twice: against the build before, against ``session.get_providers()``
after, and every provider that was asked for but does not run gets a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CPU = "CPUExecutionProvider"
PROVIDERS: dict[str, str] = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


@dataclass
class ProviderPlan:
    """The providers to hand to ``InferenceSession`` (in priority order) and what was dropped."""

    requested: list[str]
    providers: list[tuple[str, dict[str, Any]]]
    dropped: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.providers]


def plan(
    requested: list[str],
    available: list[str],
    *,
    device_id: int,
    trt_fp16: bool,
    trt_engine_cache: Path | None,
) -> ProviderPlan:
    """Map short names to onnxruntime providers, dropping (with a reason) those not built in.

    CPU always comes last: it is onnxruntime's fallback for operators a GPU provider does
    not implement, and ours when no GPU provider starts.
    """
    full = [PROVIDERS[short] for short in requested]
    result = ProviderPlan(requested=full, providers=[])
    for name in full:
        if name == CPU:
            continue
        if name not in available:
            result.dropped[name] = (
                f"{name} is not part of this onnxruntime build (it offers "
                f"{', '.join(available)}); install onnxruntime-gpu instead of onnxruntime"
            )
            continue
        options: dict[str, Any] = {"device_id": device_id}
        if name == PROVIDERS["tensorrt"]:
            options["trt_fp16_enable"] = trt_fp16
            if trt_engine_cache is not None:
                options["trt_engine_cache_enable"] = True
                options["trt_engine_cache_path"] = str(trt_engine_cache)
        result.providers.append((name, options))
    result.providers.append((CPU, {}))
    return result


def not_started(plan: ProviderPlan, running: list[str]) -> dict[str, str]:
    """Providers that were planned but that the session does not run, with the likely cause."""
    missing = {}
    for name in plan.names:
        if name != CPU and name not in running:
            missing[name] = (
                f"onnxruntime could not start {name} (no usable GPU with this device_id, or "
                "the CUDA/cuDNN/TensorRT libraries it needs are missing; onnxruntime's own "
                "log lines above name the library)"
            )
    return missing
