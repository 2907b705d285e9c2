"""Test helpers for dl-inference and its plugins: a real server in a subprocess, what tests
ask it (:mod:`dl_inference.testing.probes`), and the backend conformance suite
(:mod:`dl_inference.testing.conformance`)."""

from dl_inference.testing.conformance import (
    BackendConformance,
    ConformanceEnv,
    ModelSpec,
    load_repository,
)
from dl_inference.testing.probes import get_status, grpc_health, post_json, wait_for
from dl_inference.testing.repository import write_python_model
from dl_inference.testing.server_process import ServerProcess, free_port, stop_process

__all__ = [
    "BackendConformance",
    "ConformanceEnv",
    "ModelSpec",
    "ServerProcess",
    "free_port",
    "get_status",
    "grpc_health",
    "load_repository",
    "post_json",
    "stop_process",
    "wait_for",
    "write_python_model",
]
