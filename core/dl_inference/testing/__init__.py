"""Test helpers for dl-inference and its plugins: a real server in a subprocess, and the
backend conformance suite (:mod:`dl_inference.testing.conformance`)."""

from dl_inference.testing.conformance import BackendConformance, ModelSpec
from dl_inference.testing.repository import write_python_model
from dl_inference.testing.server_process import ServerProcess, free_port

__all__ = ["BackendConformance", "ModelSpec", "ServerProcess", "free_port", "write_python_model"]
