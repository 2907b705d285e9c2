"""CUDA and TensorRT execution providers, on machines with a CUDA GPU.

Skipped, with the reason, where ``torch.cuda.is_available()`` is False. Where a GPU exists
but onnxruntime cannot start a provider (its CUDA/cuDNN/TensorRT libraries missing), the
test is skipped with onnxruntime's reason rather than failed: that is the machine's setup,
and the CPU fallback it falls into is tested in test_backend.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dl_inference import ModelConfig
from dl_inference_onnx.backend import OnnxBackend, OnnxSettings


def load(folder: Path, file: Path, **config: Any) -> OnnxBackend:
    version = folder / "1"
    version.mkdir(parents=True)
    shutil.copy(file, version / "model.onnx")
    model_config = ModelConfig.from_mapping({"backend": "onnx", "max_batch_size": 8, **config})
    settings = OnnxSettings.model_validate(model_config.backend_options)
    backend = OnnxBackend(folder.name, "1", version, model_config, settings)
    backend.load()
    return backend


def require(backend: OnnxBackend, provider: str) -> None:
    if backend.running_providers[0] != provider:
        reason = backend.dropped_providers.get(provider, "unknown")
        pytest.skip(f"onnxruntime could not start {provider} on this GPU machine: {reason}")


def test_cuda_provider_runs_the_model(
    gpu: None, built: Any, tmp_path: Path, torch_run: Any
) -> None:
    backend = load(tmp_path / "cuda", built.cnn_file, device="cuda:0")
    require(backend, "CUDAExecutionProvider")
    assert backend.dropped_providers == {}
    image = np.random.default_rng(2).standard_normal((4, 3, 8, 8)).astype(np.float32)
    logits = backend.predict({"image": image})["logits"]
    np.testing.assert_allclose(logits, torch_run(built.cnn, image), rtol=1e-3, atol=1e-4)


def test_tensorrt_fp16_with_an_engine_cache(
    gpu: None, built: Any, tmp_path: Path, torch_run: Any
) -> None:
    backend = load(
        tmp_path / "trt",
        built.cnn_file,
        providers=["tensorrt", "cuda"],
        trt_fp16=True,
        trt_engine_cache="engines",
    )
    require(backend, "TensorrtExecutionProvider")
    image = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    logits = backend.predict({"image": image})["logits"]
    # FP16 engines: agreement to fp16 precision only.
    np.testing.assert_allclose(logits, torch_run(built.cnn, image), rtol=2e-2, atol=2e-2)
    cache = tmp_path / "trt" / "engines"
    assert cache.is_dir() and any(cache.iterdir()), "TensorRT wrote no engine to the cache"


def test_wrong_device_id_falls_back_with_a_reason(gpu: None, built: Any, tmp_path: Path) -> None:
    import torch

    missing = torch.cuda.device_count() + 3
    backend = load(tmp_path / "nodev", built.mlp_file, providers=["cuda"], device_id=missing)
    assert backend.running_providers == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider" in backend.dropped_providers
