"""Real SavedModels built once per test session (TensorFlow import and tracing are slow).

- ``keras``: a Keras Dense network, exported with ``Model.export`` (input ``x`` [-1, 4]).
- ``text``: a ``tf.Module`` with two signatures and string inputs (``serving_default``
  and ``shout``), saved as versions 1 and 2 (version 2 adds ``offset`` to ``length``).
- ``census``: classification over serialized ``tf.Example`` (``classify`` with TF Serving's
  classify method name written into saved_model.pb, ``regress`` left as a TF2 "predict"
  signature that only has the right shape), plus a numeric ``serving_default``.

Each builder also returns the live object, so tests compare served outputs with the model
run in-process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASS_LABELS = ("cat", "dog", "eel")


@dataclass
class Built:
    """A SavedModel folder (``<root>/<name>``) and the in-process objects it was saved from."""

    root: Path
    keras: Any
    text_v1: Any
    text_v2: Any
    census: Any


def _keras(folder: Path) -> Any:
    import keras
    import numpy as np

    keras.utils.set_random_seed(7)
    inputs = keras.Input(shape=(4,), name="x", dtype="float32")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(hidden)
    model = keras.Model(inputs, outputs)
    model.predict(np.zeros((1, 4), np.float32), verbose=0)
    model.export(str(folder), format="tf_saved_model", verbose=False)
    return model


def _text_module(offset: int) -> Any:
    import tensorflow as tf

    class Text(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.offset = tf.Variable(offset, dtype=tf.int32)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string, name="text"),
                tf.TensorSpec([None], tf.float32, name="scale"),
            ]
        )
        def serve(self, text: Any, scale: Any) -> dict[str, Any]:
            length = tf.strings.length(text) + self.offset
            return {"length": length, "scaled": tf.cast(length, tf.float32) * scale}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def shout(self, text: Any) -> dict[str, Any]:
            return {"upper": tf.strings.upper(text), "echo_bytes": text}

    return Text()


def _save_text(folder: Path, offset: int) -> Any:
    import tensorflow as tf

    module = _text_module(offset)
    tf.saved_model.save(
        module, str(folder), signatures={"serving_default": module.serve, "shout": module.shout}
    )
    return module


def _census(folder: Path) -> Any:
    import tensorflow as tf

    features = {
        "age": tf.io.FixedLenFeature([1], tf.float32),
        "hours": tf.io.FixedLenFeature([1], tf.float32),
    }

    class Census(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable([[0.5, -1.0, 0.25], [0.1, 0.2, -0.3]], dtype=tf.float32)
            self.labels = tf.constant(list(CLASS_LABELS))

        def _logits(self, x: Any) -> Any:
            return tf.matmul(x, self.w)

        def _parse(self, serialized: Any) -> Any:
            parsed = tf.io.parse_example(serialized, features)
            return tf.concat([parsed["age"], parsed["hours"]], axis=1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, serialized: Any) -> dict[str, Any]:
            scores = tf.nn.softmax(self._logits(self._parse(serialized)))
            classes = tf.tile(self.labels[tf.newaxis, :], [tf.shape(scores)[0], 1])
            return {"classes": classes, "scores": scores}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, serialized: Any) -> dict[str, Any]:
            x = self._parse(serialized)
            return {"outputs": x[:, 0] * 2.0 + x[:, 1]}

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"logits": self._logits(x)}

    module = Census()
    tf.saved_model.save(
        module,
        str(folder),
        signatures={
            "serving_default": module.serve,
            "classify": module.classify,
            "regress": module.regress,
        },
    )
    # TF2 writes every signature as "predict"; give `classify` TF Serving's classify method,
    # as Estimator exports did, and leave `regress` recognisable only by its shape.
    from tensorflow.core.protobuf import saved_model_pb2

    pb = folder / "saved_model.pb"
    saved = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    saved.meta_graphs[0].signature_def["classify"].method_name = "tensorflow/serving/classify"
    pb.write_bytes(saved.SerializeToString())
    return module


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """Every SavedModel, in TF Serving's layout ``<root>/<model>/<version>/``."""
    root = tmp_path_factory.mktemp("savedmodels")
    keras_model = _keras(root / "keras" / "1")
    text_v1 = _save_text(root / "text" / "1", 0)
    text_v2 = _save_text(root / "text" / "2", 100)
    census = _census(root / "census" / "1")
    yield Built(root, keras_model, text_v1, text_v2, census)
