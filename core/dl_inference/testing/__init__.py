"""Test helpers for dl-inference and its plugins: a real server in a subprocess, and the
backend conformance suite (:mod:`dl_inference.testing.conformance`)."""

from dl_inference.testing.conformance import (
    BackendConformance,
    ConformanceEnv,
    ModelSpec,
    load_repository,
)
from dl_inference.testing.repository import write_python_model
from dl_inference.testing.server_process import ServerProcess, free_port

__all__ = [
    "BackendConformance",
    "ConformanceEnv",
    "ModelSpec",
    "ServerProcess",
    "free_port",
    "load_repository",
    "write_python_model",
]
