"""The plugin on its own: no framework behind it, registered from its own distribution."""

from __future__ import annotations

import json
import subprocess
import sys

# Everything the protocol runs on, loaded and exercised as a server does at start-up.
LOAD_EVERYTHING = """
import sys

import numpy as np

import dl_inference_tfserving
from dl_inference_tfserving import codec, grpc_api, reflection, rest, service, signatures
from dl_inference_tfserving.protocol import TFServingProtocol

protocol = TFServingProtocol()
assert protocol.routing_keys() and protocol.rest_model_paths()
assert protocol.reflection_files()
assert codec.to_numpy(codec.from_numpy(np.zeros(2, np.float32))).tolist() == [0.0, 0.0]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {
    "tensorflow", "tensorflow_serving", "dl_inference_tensorflow", "torch", "keras"})
print("LOADED", loaded)
"""


def test_the_protocol_imports_no_framework_and_no_backend_plugin() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LOAD_EVERYTHING], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED []" in result.stdout, result.stdout


def test_plugins_command_lists_the_protocol_from_this_distribution() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dl_inference", "plugins", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    tfserving = plugins["tfserving"]
    assert tfserving["distribution"] == "dl-inference-tfserving"
    assert tfserving["status"] == "loaded", tfserving["error"]
    assert tfserving["registers"] == {"protocols": ["tfserving"]}
    # The tensorflow backend no longer registers the protocol itself.
    if "tensorflow" in plugins:
        assert "protocols" not in plugins["tensorflow"]["registers"]
