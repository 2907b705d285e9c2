"""The ``onnx`` backend alone: graph metadata, predictions against onnxruntime and torch,
string tensors, execution-provider fallback, settings, and the errors users see."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog.testing
from pydantic import ValidationError

from dl_inference import BackendError, ConfigError, InvalidInput, ModelConfig, TensorSpec
from dl_inference_onnx.backend import OnnxBackend, OnnxSettings, decode_strings, encode_strings


def make_backend(folder: Path, files: list[Path], **config: Any) -> OnnxBackend:
    """An OnnxBackend over a version folder holding ``files``, as the model registry builds it."""
    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)
    for file in files:
        shutil.copy(file, version / file.name)
    model_config = ModelConfig.from_mapping({"backend": "onnx", **config})
    settings = OnnxSettings.model_validate(model_config.backend_options)
    return OnnxBackend(folder.name, "1", version, model_config, settings)


def loaded(folder: Path, files: list[Path], **config: Any) -> OnnxBackend:
    backend = make_backend(folder, files, **config)
    backend.load()
    return backend


# -- metadata from the graph -----------------------------------------------------------------


def test_metadata_comes_from_the_graph(built: Any, tmp_path: Path) -> None:
    backend = loaded(tmp_path / "mlp", [built.mlp_file], max_batch_size=8)
    assert backend.inputs() == [TensorSpec("x", "FP32", (-1, 4))]
    assert backend.outputs() == [TensorSpec("probs", "FP32", (-1, 3))]
    assert backend.platform == "onnxruntime_onnx"
    text = loaded(tmp_path / "text", [built.text_file])
    assert text.inputs() == [TensorSpec("text", "BYTES", (-1,))]
    assert [(s.name, s.datatype) for s in text.outputs()] == [
        ("shout", "BYTES"),
        ("three", "BOOL"),
        ("label", "INT64"),
        ("echo", "BYTES"),
    ]


def test_declared_tensors_narrow_and_select(built: Any, tmp_path: Path) -> None:
    """config.yaml may fix a dynamic dimension and pick a subset of outputs."""
    backend = loaded(
        tmp_path / "text",
        [built.text_file],
        inputs=[{"name": "text", "datatype": "BYTES", "shape": [2]}],
        outputs=[{"name": "label", "datatype": "INT64", "shape": [-1]}],
    )
    assert backend.inputs() == [TensorSpec("text", "BYTES", (2,))]
    out = backend.predict({"text": np.array([b"dog", b"bird"], dtype=object)})
    assert list(out) == ["label"]
    np.testing.assert_array_equal(out["label"], [1, -1])


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        ({"name": "y", "datatype": "FP32", "shape": [4]}, "does not have; its inputs are: x"),
        ({"name": "x", "datatype": "FP64", "shape": [4]}, "as FP64 [-1, 4], but mlp.onnx has FP32"),
        ({"name": "x", "datatype": "FP32", "shape": [5]}, "but mlp.onnx has [-1, 4]"),
        ({"name": "x", "datatype": "FP32", "shape": [-1, 4]}, "leave the batch dimension out"),
    ],
)
def test_declared_tensors_that_contradict_the_graph_fail_the_load(
    built: Any, tmp_path: Path, declared: dict[str, Any], expected: str
) -> None:
    backend = make_backend(tmp_path / "m", [built.mlp_file], max_batch_size=4, inputs=[declared])
    with pytest.raises(ConfigError) as caught:
        backend.load()
    assert expected in str(caught.value)


def test_batching_needs_a_dynamic_first_dimension(built: Any, tmp_path: Path) -> None:
    backend = make_backend(tmp_path / "fixed", [built.fixed_file], max_batch_size=4)
    with pytest.raises(ConfigError) as caught:
        backend.load()
    message = str(caught.value)
    assert "input 'x' has a fixed first dimension 1 (shape [1, 4])" in message
    assert "max_batch_size: 4" in message and "dynamic_axes" in message
    # Without batching the same file serves, with its fixed shape as metadata.
    unbatched = loaded(tmp_path / "fixed0", [built.fixed_file])
    assert unbatched.inputs() == [TensorSpec("x", "FP32", (1, 4))]


def test_folder_with_several_onnx_files_needs_model_file(built: Any, tmp_path: Path) -> None:
    files = [built.mlp_file, built.cnn_file]
    with pytest.raises(ConfigError, match=r"several \.onnx files \(cnn\.onnx, mlp\.onnx\)"):
        make_backend(tmp_path / "two", files).load()
    chosen = loaded(tmp_path / "chosen", files, model_file="cnn.onnx")
    assert [s.name for s in chosen.inputs()] == ["image"]
    with pytest.raises(ConfigError, match=r"model_file 'nope\.onnx': no such file"):
        make_backend(tmp_path / "bad", files, model_file="nope.onnx").load()


def test_a_graph_that_is_not_onnx_fails_with_onnxruntimes_reason(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf")
    with pytest.raises(BackendError, match=r"onnxruntime cannot load junk\.onnx"):
        make_backend(tmp_path / "junk", [junk]).load()


def test_a_graph_newer_than_onnxruntime_reads_says_what_to_do(tmp_path: Path) -> None:
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 99  # newer than any onnxruntime reads, whatever the installed onnx writes
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    with pytest.raises(BackendError) as caught:
        make_backend(tmp_path / "new", [path]).load()
    message = str(caught.value)
    assert message.startswith("model.onnx was written with ONNX IR version 99, newer than ")
    assert f"onnxruntime {onnxruntime.__version__} reads (up to " in message
    assert "ir_version" in message and "\n" not in message and "onnxruntime::" not in message


# -- predictions -----------------------------------------------------------------------------


def test_torch_exported_models_match_torch_and_onnxruntime(
    built: Any, tmp_path: Path, torch_run: Any, ort_run: Any
) -> None:
    rng = np.random.default_rng(1)
    mlp = loaded(tmp_path / "mlp", [built.mlp_file], max_batch_size=8)
    cnn = loaded(tmp_path / "cnn", [built.cnn_file], max_batch_size=8)
    for batch in (1, 5):
        x = rng.standard_normal((batch, 4)).astype(np.float32)
        probs = mlp.predict({"x": x})["probs"]
        assert probs.shape == (batch, 3) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, torch_run(built.mlp, x), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(probs, ort_run(built.mlp_file, {"x": x})[0])
        image = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
        logits = cnn.predict({"image": image})["logits"]
        np.testing.assert_allclose(logits, torch_run(built.cnn, image), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(logits, ort_run(built.cnn_file, {"image": image})[0])


def test_string_model_built_with_onnx_helper(built: Any, tmp_path: Path, ort_run: Any) -> None:
    backend = loaded(tmp_path / "text", [built.text_file])
    words = ["cat", "dogs", "été", ""]
    request = np.array([w.encode() for w in words], dtype=object)
    out = backend.predict({"text": request})
    shout, three, label, echo = ort_run(built.text_file, {"text": np.array(words, dtype=object)})
    # BYTES come back as bytes holding what onnxruntime gives for the same str inputs.
    assert list(out["shout"]) == [s.encode() for s in shout]
    assert list(out["shout"]) == [b"cat!", b"dogs!", "été!".encode(), b"!"]
    # UTF-8 reached the graph as text: "été" is three characters and matches its label.
    np.testing.assert_array_equal(out["three"], three)
    assert list(out["three"]) == [True, False, True, False]
    np.testing.assert_array_equal(out["label"], label)
    assert list(out["label"]) == [0, -1, 2, -1]
    assert list(out["echo"]) == list(request) and list(echo) == words


def test_non_utf8_bytes_survive_byte_preserving_operators(built: Any, tmp_path: Path) -> None:
    backend = loaded(tmp_path / "text", [built.text_file])
    raw = np.array([b"\x00\xfe\xff", "été".encode(), b""], dtype=object)
    out = backend.predict({"text": raw})
    assert list(out["echo"]) == list(raw)
    assert out["echo"].dtype == np.object_ and all(isinstance(v, bytes) for v in out["echo"])


def test_string_codec_round_trip() -> None:
    text = np.array([["a", "é"]], dtype=object)
    as_str, latin1 = encode_strings(np.array([[b"a", "é".encode()]], dtype=object))
    assert not latin1 and as_str.tolist() == text.tolist()
    raw = np.array([b"\xff\x00", b"ok"], dtype=object)
    as_str, latin1 = encode_strings(raw)
    assert latin1
    assert decode_strings(as_str, latin1).tolist() == raw.tolist()
    # A character above U+00FF can only come from the model; it keeps its UTF-8 bytes.
    assert decode_strings(np.array(["€"], dtype=object), True).tolist() == ["€".encode()]


def test_predict_errors(built: Any, tmp_path: Path) -> None:
    backend = loaded(tmp_path / "mlp", [built.mlp_file], max_batch_size=8)
    with pytest.raises(InvalidInput, match="missing: x, unknown: z"):
        backend.predict({"z": np.zeros((1, 4), np.float32)})
    with pytest.raises(InvalidInput, match=r"float64 given, FP32 \(float32\) expected"):
        backend.predict({"x": np.zeros((1, 4))})
    with pytest.raises(InvalidInput, match="Got invalid dimensions for input: x"):
        backend.predict({"x": np.zeros((1, 5), np.float32)})
    assert backend.predict({"x": np.zeros((2, 4), np.float32)})["probs"].shape == (2, 3)
    backend.unload()
    with pytest.raises(BackendError, match="'mlp' version 1 is not loaded"):
        backend.predict({"x": np.zeros((1, 4), np.float32)})


# -- settings and providers ------------------------------------------------------------------


def test_session_options_follow_settings(built: Any, tmp_path: Path) -> None:
    import onnxruntime as ort

    backend = loaded(
        tmp_path / "mlp",
        [built.mlp_file],
        graph_optimization_level="basic",
        intra_op_threads=1,
        inter_op_threads=2,
        allow_spinning=False,
    )
    options = backend._session.get_session_options()
    for pool in ("intra_op", "inter_op"):
        assert options.get_session_config_entry(f"session.{pool}.allow_spinning") == "0"
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 2
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert backend.running_providers == ["CPUExecutionProvider"]
    assert backend.dropped_providers == {}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"providers": ["rocm"]}, "providers.0"),
        ({"providers": []}, "at least 1 item"),
        ({"device": "gpu"}, "unknown device 'gpu'; use cpu, cuda or cuda:N"),
        ({"graph_optimization_level": "max"}, "'disable', 'basic', 'extended' or 'all'"),
        ({"intra_op_threads": 0}, "greater than or equal to 1"),
        ({"trt_fp17": True}, "trt_fp17"),
    ],
)
def test_bad_settings_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        OnnxSettings.model_validate(options)
    assert message in str(caught.value)


def test_device_is_shorthand_for_providers() -> None:
    assert OnnxSettings().provider_names() == ["cpu"]
    cuda = OnnxSettings(device="cuda:1")
    assert cuda.provider_names() == ["cuda", "cpu"] and cuda.gpu_id() == 1
    explicit = OnnxSettings(device="cuda:1", providers=["tensorrt"], device_id=0)
    assert explicit.provider_names() == ["tensorrt"] and explicit.gpu_id() == 0


def test_cuda_falls_back_to_cpu_with_a_logged_reason(
    built: Any, tmp_path: Path, cpu_only: None, ort_run: Any
) -> None:
    """onnxruntime-gpu lists CUDA here but cannot start it: the model runs on CPU and says why."""
    with structlog.testing.capture_logs() as logs:
        backend = loaded(tmp_path / "mlp", [built.mlp_file], providers=["cuda"], max_batch_size=4)
    assert backend.running_providers == ["CPUExecutionProvider"]
    reason = backend.dropped_providers["CUDAExecutionProvider"]
    assert "could not start CUDAExecutionProvider" in reason
    fallbacks = [e for e in logs if e["event"] == "onnx provider fallback"]
    assert [(e["log_level"], e["asked_for"], e["running_on"], e["reason"]) for e in fallbacks] == [
        ("warning", "CUDAExecutionProvider", "CPUExecutionProvider", reason)
    ], logs
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(
        backend.predict({"x": x})["probs"], ort_run(built.mlp_file, {"x": x})[0]
    )


def test_provider_missing_from_the_build_falls_back(
    built: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the CPU-only onnxruntime package, GPU providers are dropped before the session."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with structlog.testing.capture_logs() as logs:
        backend = loaded(tmp_path / "m", [built.mlp_file], providers=["tensorrt", "cuda", "cpu"])
    assert backend.running_providers == ["CPUExecutionProvider"]
    assert set(backend.dropped_providers) == {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
    for reason in backend.dropped_providers.values():
        assert "not part of this onnxruntime build" in reason and "onnxruntime-gpu" in reason
    assert sum(e.get("running_on") == "CPUExecutionProvider" for e in logs) == 2


def test_fallback_can_be_refused(
    built: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    backend = make_backend(
        tmp_path / "strict", [built.mlp_file], providers=["cuda"], provider_fallback=False
    )
    with pytest.raises(BackendError) as caught:
        backend.load()
    message = str(caught.value)
    assert "CUDAExecutionProvider is not part of this onnxruntime build" in message
    assert "provider_fallback: true" in message


def test_refused_fallback_when_cuda_cannot_start(
    built: Any, tmp_path: Path, cpu_only: None
) -> None:
    backend = make_backend(
        tmp_path / "strict", [built.mlp_file], device="cuda", provider_fallback=False
    )
    with pytest.raises(BackendError, match="could not start CUDAExecutionProvider"):
        backend.load()
