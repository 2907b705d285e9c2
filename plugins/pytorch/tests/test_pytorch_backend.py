"""The pytorch backend alone: real models in tmp_path, load(), predict(), errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from _torch_models import (
    CNN_INPUT,
    CNN_OUTPUT,
    PNG_PROCESSOR,
    digits,
    png_bytes,
    png_reference,
    reference,
    write_cnn,
    write_config,
    write_twice,
)
from pydantic import ValidationError

from dl_inference import BackendError, ConfigError, InvalidInput, TensorSpec
from dl_inference_pytorch import _loading
from dl_inference_pytorch.backend import PyTorchBackend, PyTorchSettings

TRUSTED = {"trust_pickle": True}
# torch 2.10+ deprecates TorchScript; the backend still serves it (and tests save it).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize("fmt", ["pth", "pt", "pt2"])
def test_cnn_in_every_format_matches_the_module_in_process(tmp_path, load_backend, fmt):
    options = TRUSTED if fmt == "pth" else {}
    module = write_cnn(tmp_path, "cnn", fmt, options)
    backend = load_backend(tmp_path, "cnn")
    assert backend.file.kind == {"pth": "pickle", "pt": "torchscript", "pt2": "export"}[fmt]
    for batch in (1, 3):
        x = digits(batch, seed=batch)
        out = backend.predict({"x": x})
        assert list(out) == ["output__0"]
        assert out["output__0"].dtype == np.float32 and out["output__0"].shape == (batch, 10)
        np.testing.assert_allclose(out["output__0"], reference(module, x), rtol=1e-5, atol=1e-6)


def test_declared_output_names_are_used(tmp_path, load_backend):
    module = write_cnn(
        tmp_path, "cnn", "pt", {"inputs": [CNN_INPUT], "outputs": [CNN_OUTPUT], "max_batch_size": 8}
    )
    backend = load_backend(tmp_path, "cnn")
    x = digits(2)
    out = backend.predict({"x": x})
    assert list(out) == ["logits"]
    np.testing.assert_allclose(out["logits"], reference(module, x), rtol=1e-5, atol=1e-6)


def test_export_program_reports_its_own_input_and_output_specs(tmp_path, load_backend):
    write_cnn(tmp_path, "cnn", "pt2")
    backend = load_backend(tmp_path, "cnn")
    assert backend.inputs() == [TensorSpec("x", "FP32", (-1, 1, 28, 28))]
    assert backend.outputs() == [TensorSpec("output__0", "FP32", (-1, 10))]


def test_untrusted_pickle_is_refused_with_how_to_opt_in_or_convert(tmp_path, load_backend):
    write_cnn(tmp_path, "cnn", "pth")
    with pytest.raises(BackendError) as caught:
        load_backend(tmp_path, "cnn")
    message = str(caught.value)
    assert "trust_pickle: true" in message and "config.yaml" in message
    assert "dl-inference convert" in message and "--trust-pickle" in message


def test_pt_file_that_is_a_pickle_needs_trust_too(tmp_path, load_backend):
    module = write_cnn(tmp_path, "cnn", "pth")
    version = tmp_path / "cnn" / "1"
    (version / "model.pth").rename(version / "model.pt")
    assert not _loading.is_torchscript_archive(version / "model.pt")
    with pytest.raises(BackendError, match="trust_pickle"):
        load_backend(tmp_path, "cnn")
    write_config(tmp_path, "cnn", {"backend": "pytorch", **TRUSTED})
    backend = load_backend(tmp_path, "cnn")
    x = digits(1)
    np.testing.assert_allclose(
        backend.predict({"x": x})["output__0"], reference(module, x), rtol=1e-5
    )


def test_state_dict_pth_without_model_py_is_refused(tmp_path, load_backend):
    """net.py is not model.py: only model.py's class is built for a state_dict."""
    module = write_cnn(tmp_path, "cnn", "pth", TRUSTED)
    torch.save(module.state_dict(), tmp_path / "cnn" / "1" / "model.pth")
    with pytest.raises(BackendError, match=r"model\.pth is a state_dict .*put model\.py beside"):
        load_backend(tmp_path, "cnn")


def test_each_model_imports_its_own_net_py(tmp_path, load_backend):
    """Two models whose net.py define different classes under the same module name."""
    plain = write_cnn(tmp_path, "plain", "pth", TRUSTED, seed=0, scale=1.0)
    doubled = write_cnn(tmp_path, "doubled", "pth", TRUSTED, seed=0, scale=2.0)
    other = (
        (tmp_path / "doubled" / "1" / "net.py")
        .read_text()
        .replace("* self.scale", "* self.scale + 100.0")
    )
    (tmp_path / "doubled" / "1" / "net.py").write_text(other)
    first = load_backend(tmp_path, "plain")
    second = load_backend(tmp_path, "doubled")
    x = digits(2)
    expected = reference(plain, x)
    np.testing.assert_allclose(first.predict({"x": x})["output__0"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        second.predict({"x": x})["output__0"], reference(doubled, x) + 100.0, rtol=1e-5, atol=1e-4
    )
    import sys

    assert "net" not in sys.modules, "a model's net.py leaked into the process's imports"


# processor.py is the kernel's: these tests load models as the server does (serve_models).


def test_run_model_calls_the_model_twice_with_request_parameters(tmp_path, serve_models):
    layer = write_twice(tmp_path)
    env = serve_models(tmp_path)
    x = np.arange(8, dtype=np.float64).reshape(2, 4)  # float64 in: cast to the model's float32
    with torch.inference_mode():
        expected = (layer(layer(torch.from_numpy(x).float())) * 3.0).numpy()
    out = env.infer("twice", {"input__0": x}, parameters={"scale": 3.0}).outputs
    np.testing.assert_allclose(out["output__0"], expected, rtol=1e-5, atol=1e-6)


def test_error_in_user_code_names_message_and_line(tmp_path, serve_models):
    write_twice(tmp_path)
    env = serve_models(tmp_path)
    x = np.ones((1, 4), np.float32)
    with pytest.raises(BackendError) as caught:
        env.infer("twice", {"input__0": x}, parameters={"fail": True})
    message = str(caught.value)
    assert "failure requested by the fail tag" in message
    assert "run_model()" in message and "processor.py:7" in message
    assert env.infer("twice", {"input__0": x}).outputs["output__0"].shape == (1, 4)  # serves


def png_request(image: np.ndarray | bytes) -> dict[str, np.ndarray]:
    data = np.empty(1, dtype=object)
    data[0] = image if isinstance(image, bytes) else png_bytes(image)
    return {"image": data}


def test_png_processor_decodes_image_bytes(tmp_path, serve_models):
    module = write_cnn(tmp_path, "png", "pt", processor=PNG_PROCESSOR)
    env = serve_models(tmp_path)
    image = (np.arange(784).reshape(28, 28) % 251).astype(np.uint8)
    out = env.infer("png", png_request(image)).outputs
    np.testing.assert_allclose(out["output__0"], png_reference(module, image), rtol=1e-5, atol=1e-7)
    assert out["output__0"].sum() == pytest.approx(1.0, abs=1e-5)


def test_processor_beside_the_model_config_is_honoured(tmp_path, serve_models):
    """``<model>/processor.py`` (beside config.yaml), as the README documents."""
    module = write_cnn(tmp_path, "png", "pt")
    (tmp_path / "png" / "processor.py").write_text(textwrap.dedent(PNG_PROCESSOR))
    env = serve_models(tmp_path)
    assert env.models.resolve("png").ready
    image = (np.arange(784).reshape(28, 28) % 7 * 30).astype(np.uint8)
    out = env.infer("png", png_request(image)).outputs
    np.testing.assert_allclose(out["output__0"], png_reference(module, image), rtol=1e-5, atol=1e-7)


def test_non_image_bytes_are_invalid_input_with_the_processor_line(tmp_path, serve_models):
    write_cnn(tmp_path, "png", "pt", processor=PNG_PROCESSOR)
    env = serve_models(tmp_path)
    with pytest.raises(InvalidInput) as caught:
        env.infer("png", png_request(b"this is not a picture"))
    message = str(caught.value)
    assert "preprocess()" in message and "processor.py:" in message
    assert "cannot identify image file" in message
    with pytest.raises(InvalidInput, match="expected a 28x28 image, got 5x5"):
        env.infer("png", png_request(np.zeros((5, 5), np.uint8)))


DEVICE_PROBE = """
import torch


def preprocess(x, **kwargs):
    return x * 1  # numpy: the backend moves what preprocess returns to the model's device


def run_model(model, x, **kwargs):
    weight = next(model.parameters())
    assert isinstance(x, torch.Tensor) and x.device == weight.device, repr(x)[:80]
    return model(x)


def postprocess(y, **kwargs):
    assert isinstance(y, torch.Tensor), type(y)
    return {"device": y.device.type, "logits": y}
"""
DEVICES = ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_hooks_see_tensors_on_the_models_device(tmp_path, serve_models, device):
    module = write_cnn(tmp_path, "cnn", "pt", {"device": device}, processor=DEVICE_PROBE)
    env = serve_models(tmp_path)
    x = digits(2)
    out = env.infer("cnn", {"x": x}).outputs
    assert out["device"].tolist() == [device.split(":")[0].encode()]
    np.testing.assert_allclose(out["logits"], reference(module, x), rtol=1e-3, atol=1e-4)


def test_bytes_without_a_preprocess_are_refused(tmp_path, load_backend):
    write_cnn(tmp_path, "cnn", "pt")
    backend = load_backend(tmp_path, "cnn")
    data = np.empty(1, dtype=object)
    data[0] = b"\x89PNG"
    with pytest.raises(InvalidInput, match=r"BYTES data.*preprocess\(\) turns the bytes"):
        backend.predict({"x": data})


@pytest.mark.parametrize("dtype,rtol", [("float16", 2e-2), ("bfloat16", 6e-2)])
def test_reduced_precision_dtype(tmp_path, load_backend, dtype, rtol):
    module = write_cnn(tmp_path, "cnn", "pt", {"dtype": dtype})
    backend = load_backend(tmp_path, "cnn")
    x = digits(2)
    out = backend.predict({"x": x})["output__0"]
    # numpy has no bfloat16: such outputs come back as float32.
    assert out.dtype == (np.float16 if dtype == "float16" else np.float32)
    np.testing.assert_allclose(out.astype(np.float32), reference(module, x), rtol=rtol, atol=rtol)


def test_threads_and_inference_mode_reach_the_model(tmp_path, serve_models):
    probe = """
    import torch


    def run_model(model, x, **kwargs):
        return torch.tensor([torch.get_num_threads(), int(torch.is_inference_mode_enabled())])
    """
    write_cnn(tmp_path, "probe", "pt", {"threads": 1, "inference_mode": False}, processor=probe)
    write_cnn(tmp_path, "probe2", "pt", {"threads": 2}, processor=probe)
    env = serve_models(tmp_path)
    assert env.infer("probe", {"x": digits(1)}).outputs["output__0"].tolist() == [1, 0]
    assert env.infer("probe2", {"x": digits(1)}).outputs["output__0"].tolist() == [2, 1]


def test_settings_validation():
    assert PyTorchSettings(device="cuda:1").device == "cuda:1"
    for bad in ({"device": "gpu"}, {"dtype": "float64"}, {"threads": 0}, {"trust_pikle": True}):
        with pytest.raises(ValidationError):
            PyTorchSettings.model_validate(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_fails_at_load_with_a_clear_error(tmp_path, load_backend):
    write_cnn(tmp_path, "cnn", "pt", {"device": "cuda"})
    with pytest.raises(BackendError) as caught:
        load_backend(tmp_path, "cnn")
    assert "CUDA is not available" in str(caught.value) and "device: cpu" in str(caught.value)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)
@pytest.mark.parametrize("fmt", ["pth", "pt", "pt2"])
def test_cuda_model_matches_cpu_reference(tmp_path, load_backend, fmt):
    options = {"device": "cuda:0", **(TRUSTED if fmt == "pth" else {})}
    module = write_cnn(tmp_path, "cnn", fmt, options)
    backend = load_backend(tmp_path, "cnn")
    x = digits(4)
    out = backend.predict({"x": x})["output__0"]
    np.testing.assert_allclose(out, reference(module, x), rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)
def test_cuda_index_beyond_visible_gpus_is_refused(tmp_path, load_backend):
    write_cnn(tmp_path, "cnn", "pt", {"device": f"cuda:{torch.cuda.device_count()}"})
    with pytest.raises(BackendError, match="GPU"):
        load_backend(tmp_path, "cnn")


def test_model_file_choice(tmp_path: Path, load_backend):
    module = write_cnn(tmp_path, "cnn", "pt")
    version = tmp_path / "cnn" / "1"
    torch.jit.save(torch.jit.script(module), version / "other.pt")
    with pytest.raises(ConfigError, match=r"several \.pt files"):
        _loading.find_model_file(version, None)
    write_config(tmp_path, "cnn", {"backend": "pytorch", "model_file": "other.pt"})
    assert load_backend(tmp_path, "cnn").file.path.name == "other.pt"
    with pytest.raises(ConfigError, match="does not exist"):
        _loading.find_model_file(version, "missing.pt2")
    with pytest.raises(ConfigError, match="holds no model file"):
        _loading.find_model_file(tmp_path, None)


def test_can_load_recognises_the_three_formats(tmp_path):
    for fmt in ("pth", "pt", "pt2"):
        write_cnn(tmp_path, fmt, fmt)
        assert PyTorchBackend.can_load(tmp_path / fmt / "1")
    (tmp_path / "empty").mkdir()
    assert not PyTorchBackend.can_load(tmp_path / "empty")


def test_export_programs_load_in_parallel_threads(tmp_path, load_backend):
    """The server loads models concurrently; torch.export.load alone is not thread-safe."""
    from concurrent.futures import ThreadPoolExecutor

    modules = {f"cnn{i}": write_cnn(tmp_path, f"cnn{i}", "pt2", seed=i) for i in range(4)}
    with ThreadPoolExecutor(4) as pool:
        backends = list(pool.map(lambda name: load_backend(tmp_path, name), modules))
    x = digits(2)
    for backend, module in zip(backends, modules.values(), strict=True):
        np.testing.assert_allclose(
            backend.predict({"x": x})["output__0"], reference(module, x), rtol=1e-5, atol=1e-5
        )
