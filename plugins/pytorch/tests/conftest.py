"""Shared fixtures: build a backend straight from a model folder, as a plugin author would."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from dl_inference import ModelConfig
from dl_inference.testing import ConformanceEnv, load_repository
from dl_inference_pytorch.backend import PyTorchBackend, PyTorchSettings

# The suite runs with --import-mode=importlib, so the model helpers (_torch_models.py,
# a name no other test folder uses) are found through this folder on sys.path.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def load_backend() -> Iterator[Callable[..., PyTorchBackend]]:
    """``load_backend(root, name)``: the model's backend, constructed and loaded."""
    loaded: list[PyTorchBackend] = []

    def load(root: Path, name: str, version: str = "1") -> PyTorchBackend:
        config_file = root / name / "config.yaml"
        raw = yaml.safe_load(config_file.read_text()) if config_file.exists() else {}
        config = ModelConfig.from_mapping(raw or {})
        settings = PyTorchSettings.model_validate(config.backend_options)
        backend = PyTorchBackend(name, version, root / name / version, config, settings)
        backend.load()
        loaded.append(backend)
        return backend

    yield load
    for backend in loaded:
        backend.unload()


@pytest.fixture
def serve_models() -> Iterator[Callable[[Path], ConformanceEnv]]:
    """``serve_models(root)``: every model under ``root`` loaded by the kernel, as the
    server does (processor.py included); ``env.infer(name, inputs, parameters=...)``."""
    envs: list[ConformanceEnv] = []

    def serve(root: Path) -> ConformanceEnv:
        env = load_repository(root)
        envs.append(env)
        return env

    yield serve
    for env in envs:
        env.close()
