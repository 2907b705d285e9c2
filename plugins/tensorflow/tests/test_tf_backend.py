"""The ``tensorflow`` backend alone: loading, signatures, settings and errors."""

from __future__ import annotations

import contextvars
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from pydantic import ValidationError

from dl_inference import BackendError, InvalidInput, ModelConfig
from dl_inference_tensorflow.backend import TensorFlowBackend, TensorFlowSettings
from dl_inference_tfserving.signatures import SignatureBackend, signature_scope


def make_backend(path: Path, **settings: Any) -> TensorFlowBackend:
    return TensorFlowBackend(
        path.parent.name, path.name, path, ModelConfig(), TensorFlowSettings(**settings)
    )


@pytest.fixture(scope="module")
def text(built: Any) -> Any:
    backend = make_backend(built.root / "text" / "2")
    backend.load()
    yield backend
    backend.unload()


def test_keras_model_matches_in_process(built: Any) -> None:
    backend = make_backend(built.root / "keras" / "1")
    backend.load()
    x = np.random.default_rng(3).random((4, 4), dtype=np.float32)
    got = backend.predict({"x": x})["output_0"]
    np.testing.assert_allclose(got, built.keras.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert backend.platform == "tensorflow_savedmodel"
    backend.unload()


def test_every_signature_is_served(text: TensorFlowBackend, built: Any) -> None:
    assert text.signature_names() == ["serving_default", "shout"]
    words = np.array([b"a", b"bc"], dtype=object)
    got = text.predict({"text": words}, signature_name="shout")
    assert list(got["upper"]) == list(built.text_v2.shout(tf.constant(words))["upper"].numpy())
    got = text.predict({"text": words, "scale": np.float32([1, 2])})
    np.testing.assert_array_equal(got["length"], [101, 102])


def test_metadata_follows_the_addressed_signature(text: TensorFlowBackend) -> None:
    assert [(s.name, s.datatype, s.shape) for s in text.inputs() or []] == [
        ("scale", "FP32", (-1,)),
        ("text", "BYTES", (-1,)),
    ]
    with signature_scope("shout"):
        assert [s.name for s in text.inputs() or []] == ["text"]
        assert [s.name for s in text.outputs() or []] == ["echo_bytes", "upper"]
    with signature_scope("nope"):
        assert text.inputs() is None  # predict() reports the unknown signature


def test_it_is_a_signature_backend_for_the_tfserving_protocol(built: Any) -> None:
    backend = make_backend(built.root / "census" / "1", signature="classify")
    backend.load()
    assert isinstance(backend, SignatureBackend)
    defs = backend.signature_def_map().signature_def
    assert set(defs) == {"serving_default", "classify", "regress"}
    assert defs["classify"].method_name == "tensorflow/serving/classify"  # from saved_model.pb
    assert backend.default_signature() == "classify"
    assert [s.name for s in backend.inputs() or []] == ["inputs"]  # the default, out of scope
    backend.unload()


def test_bad_requests_are_invalid_input(text: TensorFlowBackend) -> None:
    """Served, the kernel checks inputs first (against inputs()); alone, TensorFlow does."""
    words = np.array([b"a"], dtype=object)
    with pytest.raises(InvalidInput, match=r"no signature 'nope'.*serving_default, shout"):
        text.predict({"text": words}, signature_name="nope")
    with pytest.raises(InvalidInput, match=r"must be a string.*serving_default, shout"):
        text.predict({"text": words}, signature_name=5)
    with pytest.raises(InvalidInput, match="missing a required argument: 'scale'"):
        text.predict({"text": words})
    # Never cast: 1.5 would silently become 1 in an integer input.
    with pytest.raises(InvalidInput, match="expected to be a float tensor but is a double"):
        text.predict({"text": words, "scale": np.float64([1.0])})
    with pytest.raises(InvalidInput, match="unexpected keyword argument 'other'"):
        text.predict({"text": words, "other": words}, signature_name="shout")


def test_a_signature_name_parameter_selects_the_signature_on_every_protocol(
    text: TensorFlowBackend,
) -> None:
    """The plugin's dli_on_request hook: the kernel validates against inputs() next."""
    import dl_inference_tensorflow
    from dl_inference import InferRequest, RequestContext

    def on_request(parameters: dict[str, Any]) -> list[str]:
        request = InferRequest(model_name="text", inputs={}, parameters=parameters)
        dl_inference_tensorflow.dli_on_request(
            RequestContext(protocol="v2", method="ModelInfer", request=request)
        )
        return [spec.name for spec in text.inputs() or []]

    context = contextvars.copy_context()  # what the hook selects stays in this context
    assert context.run(on_request, {"signature_name": "shout"}) == ["text"]
    assert context.run(on_request, {}) == ["scale", "text"]  # no parameter: the default
    assert context.run(on_request, {"signature_name": 7}) == ["scale", "text"]
    assert context.run(on_request, {"signature_name": "nope"}) == []  # predict() names them


def test_configured_default_signature(built: Any) -> None:
    backend = make_backend(built.root / "text" / "1", signature="shout")
    backend.load()
    assert list(backend.predict({"text": np.array([b"q"], dtype=object)})["upper"]) == [b"Q"]
    with pytest.raises(BackendError, match=r"signature 'gone'.*serving_default, shout"):
        make_backend(built.root / "text" / "1", signature="gone").load()


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="device 'tpu'"):
        TensorFlowSettings(device="tpu")
    with pytest.raises(ValidationError, match="op_librarys"):
        TensorFlowSettings.model_validate({"op_librarys": []})
    assert TensorFlowSettings(device="cuda:1").device == "cuda:1"


def test_missing_op_library_fails_the_load_with_the_paths(built: Any, tmp_path: Path) -> None:
    shutil.copytree(built.root / "keras", tmp_path / "keras")
    backend = make_backend(tmp_path / "keras" / "1", op_libraries=["ops/custom.so"])
    with pytest.raises(BackendError, match=r"op library 'ops/custom.so' not found.*keras/1/ops"):
        backend.load()


def test_op_library_is_loaded_before_the_model(built: Any, tmp_path: Path) -> None:
    """A real custom-op .so (compiled here) is loaded from the model folder."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no g++ to build a custom op library")
    source = tmp_path / "zero.cc"
    source.write_text(
        '#include "tensorflow/core/framework/op.h"\n'
        '#include "tensorflow/core/framework/op_kernel.h"\n'
        "using namespace tensorflow;\n"
        'REGISTER_OP("DliZero").Input("x: float").Output("y: float");\n'
        "class DliZero : public OpKernel {\n public:\n"
        "  explicit DliZero(OpKernelConstruction* c) : OpKernel(c) {}\n"
        "  void Compute(OpKernelContext* c) override {\n"
        "    Tensor* out = nullptr;\n"
        "    OP_REQUIRES_OK(c, c->allocate_output(0, c->input(0).shape(), &out));\n"
        "    out->flat<float>().setZero();\n  }\n};\n"
        'REGISTER_KERNEL_BUILDER(Name("DliZero").Device(DEVICE_CPU), DliZero);\n'
    )
    model = tmp_path / "zero"
    library = model / "dli_zero.so"
    model.mkdir()
    command = [compiler, "-std=c++17", "-shared", "-fPIC", "-O0", str(source), "-o", str(library)]
    command += tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()
    build = subprocess.run(command, capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"custom op did not compile here: {build.stderr[-500:]}")
    # Serve the library from a fresh process: the op must come from op_libraries, not this one.
    ops = tf.load_op_library(str(library))

    class Zero(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"y": ops.dli_zero(x)}

    module = Zero()
    tf.saved_model.save(module, str(model / "1"), signatures={"serving_default": module.serve})
    script = (
        "import numpy as np\n"
        "from pathlib import Path\n"
        "from dl_inference import ModelConfig\n"
        "from dl_inference_tensorflow.backend import TensorFlowBackend, TensorFlowSettings\n"
        f"path = Path({str(model / '1')!r})\n"
        "def backend(libs):\n"
        "    return TensorFlowBackend('zero', '1', path, ModelConfig(),\n"
        "                             TensorFlowSettings(op_libraries=libs))\n"
        "try:\n"
        "    backend([]).load()\n"
        "    print('LOADED WITHOUT LIBRARY')\n"
        "except Exception as exc:\n"
        "    print('WITHOUT:', type(exc).__name__)\n"
        "b = backend(['dli_zero.so'])\n"
        "b.load()\n"
        "print('RESULT', b.predict({'x': np.float32([1, 2])})['y'].tolist())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "RESULT [0.0, 0.0]" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "LOADED WITHOUT LIBRARY" not in result.stdout


def test_gpu_device_without_gpu_is_a_clear_load_error(built: Any) -> None:
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present: the no-GPU error path cannot be exercised")
    with pytest.raises(BackendError, match="TensorFlow sees 0 GPU"):
        make_backend(built.root / "keras" / "1", device="gpu").load()


def test_gpu_memory_growth_is_set_when_a_gpu_exists() -> None:
    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("no GPU visible to TensorFlow: memory growth has nothing to apply to")
    script = (
        "import tensorflow as tf\n"
        "from dl_inference_tensorflow.backend import _configure_runtime, TensorFlowSettings\n"
        "_configure_runtime(tf, TensorFlowSettings(gpu_memory_growth=True))\n"
        "print(all(tf.config.experimental.get_memory_growth(g)"
        " for g in tf.config.list_physical_devices('GPU')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip().endswith("True"), result.stderr[-2000:]


def test_thread_settings_apply_to_a_fresh_process(built: Any) -> None:
    script = (
        "import numpy as np, tensorflow as tf\n"
        "from pathlib import Path\n"
        "from dl_inference import ModelConfig\n"
        "from dl_inference_tensorflow.backend import TensorFlowBackend, TensorFlowSettings\n"
        f"path = Path({str(built.root / 'keras' / '1')!r})\n"
        "s = TensorFlowSettings(intra_op_threads=3, inter_op_threads=2)\n"
        "b = TensorFlowBackend('keras', '1', path, ModelConfig(), s)\n"
        "b.load()\n"
        "b.predict({'x': np.zeros((1, 4), np.float32)})\n"
        "print('THREADS', tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "THREADS 3 2" in result.stdout, result.stdout + result.stderr[-2000:]


def test_listing_plugins_does_not_import_tensorflow() -> None:
    script = (
        "import sys\n"
        "from dl_inference.kernel.plugins import PluginHost\n"
        "host = PluginHost().load()\n"
        "print(host.backends.owner('tensorflow'), host.protocols.owner('tfserving'))\n"
        "print('tensorflow' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    # The protocol comes from dl-inference-tfserving, which this plugin depends on.
    assert result.stdout.split() == ["tensorflow", "tfserving", "False"], result.stderr
