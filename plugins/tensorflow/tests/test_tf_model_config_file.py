"""TF Serving's own files served unchanged: ``--model_config_file`` and
``--batching_parameters_file``, given to ``dl-inference serve`` through
``plugin_settings.tfserving``, called by TF Serving's own client (``tensorflow_serving.apis``
over gRPC) and over REST.

No TF Serving binary can run here (``tensorflow_model_server`` is not a pip package), so
the answers are checked against TF Serving's documented behaviour instead of side by side:
a ``specific`` version policy serves exactly the listed versions, a request naming no
version runs the newest, ``version_label`` / ``/labels/<l>`` run the labelled one,
GetModelStatus lists the served versions newest first, and an edited models.config is
picked up after ``--model_config_file_poll_wait_seconds`` (a broken edit keeps the models
already served). The SavedModels are made here with TensorFlow (TF Serving's
``half_plus_two`` example: ``y = 0.5 * x + b``); every file the server is given hashes the
same before and after serving. Errors in the files (no TensorFlow needed) are tested in
plugins/tfserving/tests/test_tfs_model_config_file.py.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from dl_inference.testing import ServerProcess

X = np.array([1.0, 2.0, 5.0], np.float32)
# version -> b of y = 0.5 * x + b
HALF_PLUS_TWO = {1: 2.0, 2: 3.0, 3: 4.0}
HALF_PLUS_TEN = {1: 10.0}

MODELS_CONFIG = """\
# as given to tensorflow_model_server --model_config_file
model_config_list {
  config {
    name: 'half_plus_two'
    base_path: '%(base)s/half_plus_two'
    model_platform: 'tensorflow'
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: 'stable' value: 1 }
    version_labels { key: 'canary' value: 2 }
  }
}
"""
EDITED_CONFIG = """\
model_config_list {
  config {
    name: 'half_plus_two'
    base_path: '%(base)s/half_plus_two'
    model_platform: 'tensorflow'
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: 'stable' value: 2 }
  }
  config {
    name: 'half_plus_ten'
    base_path: '%(base)s/half_plus_ten'
  }
}
"""
BATCHING = """\
max_batch_size { value: 8 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 2 }
allowed_batch_sizes: [4, 8]
thread_pool_name { value: "model_server_batch_threads" }
"""


def save_half_plus(folder: Path, b: float) -> None:
    """TF Serving's half_plus_two example as a TF2 SavedModel: y = 0.5 * x + b, x [-1]."""

    class HalfPlus(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b = tf.Variable(b, dtype=tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": 0.5 * x + self.b}

    module = HalfPlus()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})


def hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "server.yaml"
    }


@dataclass
class Served:
    base: Path
    server: ServerProcess
    before: dict[str, str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("tfs")
    for version, b in HALF_PLUS_TWO.items():
        save_half_plus(base / "half_plus_two" / str(version), b)
    for version, b in HALF_PLUS_TEN.items():
        save_half_plus(base / "half_plus_ten" / str(version), b)
    (base / "models.config").write_text(MODELS_CONFIG % {"base": base})
    (base / "batching.config").write_text(BATCHING)
    (base / "repo").mkdir()
    (base / "server.yaml").write_text(
        "model_repository: repo\n"
        "server: {repository_poll_s: 0.5}\n"
        "plugin_settings:\n"
        "  tfserving:\n"
        "    model_config_file: models.config\n"
        "    batching_parameters_file: batching.config\n"
        "    model_config_file_poll_wait_seconds: 1\n"
    )
    before = hashes(base)
    with ServerProcess(["-c", "server.yaml"], cwd=base) as server:
        wait_for(lambda: rest_predict(server, "half_plus_two") is not None, server)
        yield Served(base, server, before)


def wait_for(condition: object, server: ServerProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except (urllib.error.URLError, grpc.RpcError, AssertionError):
            pass
        time.sleep(0.3)
    pytest.fail(f"condition not met in {timeout} s:\n{server.output()[-4000:]}")


def rest_predict(server: ServerProcess, model: str, label: str = "") -> list[float] | None:
    where = f"/labels/{label}" if label else ""
    request = urllib.request.Request(
        f"{server.http_url}/v1/models/{model}{where}:predict",
        data=json.dumps({"instances": X.tolist()}).encode(),
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)["predictions"]
    except urllib.error.HTTPError:
        return None


def grpc_predict(
    served: Served, model: str, *, version: int | None = None, label: str = ""
) -> np.ndarray:
    with grpc.insecure_channel(served.server.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        if label:
            request.model_spec.version_label = label
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(X))
        reply = stub.Predict(request, timeout=30)
    return tf.make_ndarray(reply.outputs["y"])


def expected(b: float) -> list[float]:
    return (0.5 * X + b).tolist()


def test_predict_runs_the_newest_listed_version(served: Served) -> None:
    """The specific policy lists 1 and 2: version 3 on disk is not served, 2 is the newest."""
    assert grpc_predict(served, "half_plus_two").tolist() == expected(HALF_PLUS_TWO[2])
    assert grpc_predict(served, "half_plus_two", version=1).tolist() == expected(2.0)
    with pytest.raises(grpc.RpcError) as refused:
        grpc_predict(served, "half_plus_two", version=3)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_version_labels_over_grpc_and_rest(served: Served) -> None:
    assert grpc_predict(served, "half_plus_two", label="stable").tolist() == expected(2.0)
    assert grpc_predict(served, "half_plus_two", label="canary").tolist() == expected(3.0)
    assert rest_predict(served.server, "half_plus_two", "stable") == expected(2.0)
    assert rest_predict(served.server, "half_plus_two", "canary") == expected(3.0)
    with pytest.raises(grpc.RpcError) as refused:
        grpc_predict(served, "half_plus_two", label="nightly")
    assert refused.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


def test_get_model_status_lists_the_listed_versions(served: Served) -> None:
    with grpc.insecure_channel(served.server.grpc_address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "half_plus_two"
        reply = stub.GetModelStatus(request, timeout=30)
    states = [(s.version, s.state) for s in reply.model_version_status]
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert states == [(2, available), (1, available)]


def test_the_batching_parameters_apply(served: Served) -> None:
    """max_batch_size, batch_timeout_micros, max_enqueued_batches x max_batch_size,
    num_batch_threads and allowed_batch_sizes, as the model's configuration says them."""
    url = f"{served.server.http_url}/v2/models/half_plus_two/config"
    with urllib.request.urlopen(url, timeout=30) as answer:
        config = json.load(answer)
    batching = config["dynamic_batching"]
    assert config["max_batch_size"] == 8
    assert batching["max_queue_delay_microseconds"] == 2000
    assert batching["preferred_batch_size"] == [4, 8]
    assert batching["default_queue_policy"]["max_queue_size"] == 100 * 8
    assert [group["count"] for group in config["instance_group"]] == [2]
    # Concurrent requests are merged and still answered each with its own rows.
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: rest_predict(served.server, "half_plus_two"), range(16)))
    assert answers == [expected(3.0)] * 16


def test_the_files_are_unchanged(served: Served) -> None:
    assert hashes(served.base) == served.before


def test_an_edited_models_config_is_picked_up(served: Served) -> None:
    """Last: it edits models.config. A broken edit keeps what is served; a good one adds
    half_plus_ten and moves the stable label, after the poll wait."""
    config = served.base / "models.config"
    config.write_text("model_config_list { config { name: 'half_plus_two' base_pat")
    time.sleep(2.5)  # past the poll wait: the broken file was read, and refused
    assert "model config file not reloaded" in served.server.output()
    assert rest_predict(served.server, "half_plus_two", "stable") == expected(2.0)
    config.write_text(EDITED_CONFIG % {"base": served.base})
    wait_for(lambda: rest_predict(served.server, "half_plus_ten") == expected(10.0), served.server)
    wait_for(
        lambda: rest_predict(served.server, "half_plus_two", "stable") == expected(3.0),
        served.server,
    )
    assert rest_predict(served.server, "half_plus_two", "canary") is None  # label removed
