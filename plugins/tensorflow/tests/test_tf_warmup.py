"""TF Serving's warm-up file (``<version>/assets.extra/tf_serving_warmup_requests``) is replayed
before a SavedModel turns ready.

The file is written as TF Serving's users write it: ``tf.io.TFRecordWriter`` of
``PredictionLog`` records built with ``tensorflow_serving.apis``. The SavedModel counts its
calls in variables, so what ran is read back from the model itself.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from dl_inference import BackendError
from dl_inference.kernel.models import ModelRegistry, ModelState
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.testing import ServerProcess
from dl_inference_tensorflow.backend import MAX_WARMUP_RECORDS, warmup_requests


class Counting(tf.Module):
    """``serving_default`` and ``other`` each count their calls; ``counts`` reads both."""

    def __init__(self) -> None:
        super().__init__()
        self.default_calls = tf.Variable(0, dtype=tf.int64)
        self.other_calls = tf.Variable(0, dtype=tf.int64)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x: Any) -> dict[str, Any]:
        self.default_calls.assign_add(1)
        return {"y": x * 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def other(self, text: Any) -> dict[str, Any]:
        self.other_calls.assign_add(1)
        return {"length": tf.strings.length(text)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="unused")])
    def counts(self, unused: Any) -> dict[str, Any]:
        return {"default_calls": self.default_calls + 0, "other_calls": self.other_calls + 0}


def save_counting(version_folder: Path) -> None:
    module = Counting()
    tf.saved_model.save(
        module,
        str(version_folder),
        signatures={
            "serving_default": module.serve,
            "other": module.other,
            "counts": module.counts,
        },
    )


def predict_log(inputs: dict[str, np.ndarray], signature: str = "") -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "counting"
    if signature:
        request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    record = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    return record.SerializeToString()


def classify_log() -> bytes:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "counting"
    record = prediction_log_pb2.PredictionLog(
        classify_log=prediction_log_pb2.ClassifyLog(request=request)
    )
    return record.SerializeToString()


def write_warmup_file(version_folder: Path, records: list[bytes]) -> None:
    folder = version_folder / "assets.extra"
    folder.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(folder / "tf_serving_warmup_requests")) as writer:
        for record in records:
            writer.write(record)


@pytest.fixture(scope="module")
def counting_saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "counting"
    save_counting(folder)
    return folder


def make_repository(root: Path, saved: Path, records: list[bytes]) -> Path:
    import shutil

    version = root / "counting" / "1"
    shutil.copytree(saved, version)
    write_warmup_file(version, records)
    return root


def test_the_warmup_file_runs_before_ready(counting_saved_model: Path, tmp_path: Path) -> None:
    records = [
        predict_log({"x": np.array([1.0, 2.0], np.float32)}),
        predict_log({"x": np.array([3.0], np.float32)}),
        predict_log({"text": np.array([b"abc"], dtype=object)}, signature="other"),
        classify_log(),  # TF Serving would run it; skipped here, and the log says so
    ]
    repo = make_repository(tmp_path / "models", counting_saved_model, records)
    with ServerProcess(["--model-repository", str(repo)]) as server:
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "counting"
            request.model_spec.signature_name = "counts"
            request.inputs["unused"].CopyFrom(tf.make_tensor_proto(np.zeros(1, np.float32)))
            reply = stub.Predict(request, timeout=30)
        # The model's own counters: two default and one `other` call, before any client's.
        assert tf.make_ndarray(reply.outputs["default_calls"]) == 2
        assert tf.make_ndarray(reply.outputs["other_calls"]) == 1
        output = server.output()
    read = [line for line in output.splitlines() if "TF Serving warm-up file read" in line]
    assert len(read) == 1, output
    assert "records=4" in read[0] and "predict_requests=3" in read[0]
    assert "classify_log" in read[0]
    ran = [line for line in output.splitlines() if "model warm-up" in line]
    assert len(ran) == 1 and "runs=3" in ran[0] and "model=counting" in ran[0], output


async def load(root: Path) -> ModelRegistry:
    plugins = PluginHost().load()
    models = ModelRegistry(plugins)
    models.prepare(scan_repository(root))
    await models.load_all()
    return models


def test_a_record_the_model_refuses_fails_the_load(
    counting_saved_model: Path, tmp_path: Path
) -> None:
    records = [
        predict_log({"x": np.array([1.0], np.float32)}),
        predict_log({"y": np.array([1.0], np.float32)}),  # no input named y
    ]
    repo = make_repository(tmp_path / "models", counting_saved_model, records)
    models = asyncio.run(load(repo))
    (version,) = models.versions("counting")
    assert version.state is ModelState.UNAVAILABLE
    assert version.reason.startswith(
        "warm-up 'tf_serving_warmup_requests record 1' failed: model 'counting' signature "
        "'serving_default' rejected the inputs"
    ), version.reason


def test_a_file_that_is_no_tfrecord_fails_the_load(
    counting_saved_model: Path, tmp_path: Path
) -> None:
    repo = make_repository(tmp_path / "models", counting_saved_model, [])
    (repo / "counting" / "1" / "assets.extra" / "tf_serving_warmup_requests").write_bytes(
        b"not a tfrecord file at all"
    )
    models = asyncio.run(load(repo))
    (version,) = models.versions("counting")
    assert version.state is ModelState.UNAVAILABLE
    assert "warm-up samples could not be read" in version.reason
    assert "is not a readable TFRecord file" in version.reason


def test_records_are_decoded_with_their_signature() -> None:
    requests, skipped = warmup_requests(
        [
            predict_log({"text": np.array([b"a", b"bc"], dtype=object)}, signature="other"),
            classify_log(),
        ],
        label="file",
    )
    (request,) = requests
    assert request.id == "file record 0"
    assert request.parameters == {"signature_name": "other"}
    assert request.inputs["text"].tolist() == [b"a", b"bc"]
    assert skipped == ["file record 1: classify_log"]


def test_a_malformed_record_is_named() -> None:
    good = predict_log({"x": np.array([1.0], np.float32)})
    with pytest.raises(BackendError, match="file record 1 is not a valid PredictionLog"):
        warmup_requests([good, good[:-3]], label="file")


def test_more_records_than_tf_serving_reads_fail(tmp_path: Path) -> None:
    from dl_inference.kernel.config.model_config import ModelConfig
    from dl_inference_tensorflow.backend import TensorFlowBackend, TensorFlowSettings

    record = predict_log({"x": np.array([1.0], np.float32)})
    write_warmup_file(tmp_path, [record] * (MAX_WARMUP_RECORDS + 1))
    backend = TensorFlowBackend("m", "1", tmp_path, ModelConfig(), TensorFlowSettings())
    with pytest.raises(BackendError, match="more than 1000 warm-up records"):
        backend.warmup_samples()


def test_config_samples_without_inputs_take_the_signatures_inputs(
    counting_saved_model: Path, tmp_path: Path
) -> None:
    # No config.yaml inputs: the zeros follow what the SavedModel's default signature takes
    # (x: float [-1] -> [1]); they run before the file's records.
    repo = make_repository(
        tmp_path / "models",
        counting_saved_model,
        [predict_log({"text": np.array([b"a"], dtype=object)}, signature="other")],
    )
    (repo / "counting" / "config.yaml").write_text("warmup: [{name: zeros, count: 2}]\n")
    models = asyncio.run(load(repo))
    model = models.resolve("counting")
    counts = model.backend.predict({"unused": np.zeros(1, np.float32)}, signature_name="counts")
    assert (int(counts["default_calls"]), int(counts["other_calls"])) == (2, 1)
