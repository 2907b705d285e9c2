"""TorchServe's eager pattern: ``model.py`` defining the module class + its state_dict.

Loaded without ``trust_pickle`` (the state_dict is read with ``weights_only=True``); a
state_dict without ``model.py`` is refused saying what it is and how to serve it.
"""

from __future__ import annotations

import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from _torch_models import (
    EAGER_SOURCE,
    digits,
    features,
    import_source,
    reference,
    write_cnn,
    write_config,
    write_eager,
)

from dl_inference import BackendError, ConfigError
from dl_inference.kernel.models import ModelState
from dl_inference_pytorch import _loading
from dl_inference_pytorch.backend import PyTorchBackend

PYTORCH = {"backend": "pytorch"}
# torch 2.10+ deprecates TorchScript; some tests here still save it.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize("weights", ["model.pth", "model.pt", "model.bin"])
def test_state_dict_with_model_py_is_served_without_trust(tmp_path, load_backend, weights):
    net = write_eager(tmp_path, "tiny", PYTORCH, weights=weights)
    backend = load_backend(tmp_path, "tiny")
    assert backend.file.kind == "state_dict" and backend.file.path.name == weights
    assert not backend.settings.trust_pickle
    for batch in (1, 5):
        x = features(batch, seed=batch)
        out = backend.predict({"x": x})["output__0"]
        np.testing.assert_allclose(out, reference(net, x), rtol=1e-5, atol=1e-6)


def test_model_args_reach_the_constructor(tmp_path, load_backend):
    net = write_eager(tmp_path, "wide", {**PYTORCH, "model_args": {"hidden": 16}}, hidden=16)
    backend = load_backend(tmp_path, "wide")
    assert backend.model.fc1.out_features == 16
    x = features(2)
    np.testing.assert_allclose(
        backend.predict({"x": x})["output__0"], reference(net, x), rtol=1e-5, atol=1e-6
    )


def test_constructor_that_needs_arguments_says_model_args(tmp_path, load_backend):
    source = EAGER_SOURCE.replace("hidden: int = 8", "hidden: int")
    write_eager(tmp_path, "needs", PYTORCH, source=source)
    with pytest.raises(BackendError) as caught:
        load_backend(tmp_path, "needs")
    message = str(caught.value)
    assert "TinyNet()" in message and "hidden" in message and "model_args:" in message


TWO_CLASSES = (
    EAGER_SOURCE
    + """

class Head(nn.Module):
    def forward(self, x):
        return x
"""
)


def test_several_module_classes_need_model_class(tmp_path, load_backend):
    net = write_eager(tmp_path, "two", PYTORCH, source=TWO_CLASSES)
    with pytest.raises(BackendError) as caught:
        load_backend(tmp_path, "two")
    message = str(caught.value)
    assert "exactly one torch.nn.Module subclass" in message
    assert "TinyNet, Head" in message and "model_class:" in message
    write_config(tmp_path, "two", {**PYTORCH, "model_class": "TinyNet"})
    backend = load_backend(tmp_path, "two")
    x = features(3)
    np.testing.assert_allclose(
        backend.predict({"x": x})["output__0"], reference(net, x), rtol=1e-5, atol=1e-6
    )
    write_config(tmp_path, "two", {**PYTORCH, "model_class": "Tail"})
    with pytest.raises(ConfigError, match=r"model_class 'Tail'.*found: TinyNet, Head"):
        load_backend(tmp_path, "two")


def test_classes_imported_into_model_py_are_not_candidates(tmp_path, load_backend):
    """As TorchServe: only classes defined in model.py count (not ``nn.Linear`` imported)."""
    source = "from torch.nn import Linear, ReLU\n" + EAGER_SOURCE
    write_eager(tmp_path, "imports", PYTORCH, source=source)
    assert type(load_backend(tmp_path, "imports").model).__name__ == "TinyNet"


def test_keys_that_do_not_fit_are_listed(tmp_path, load_backend):
    write_eager(tmp_path, "tiny", PYTORCH)
    path = tmp_path / "tiny" / "1" / "model.pth"
    state = torch.load(path, weights_only=True)
    state["extra.weight"] = torch.zeros(2)
    del state["fc2.bias"]
    state["fc1.weight"] = torch.zeros(8, 5)
    torch.save(state, path)
    with pytest.raises(BackendError) as caught:
        load_backend(tmp_path, "tiny")
    message = str(caught.value)
    assert "model.pth does not fit TinyNet from model.py" in message
    assert "missing keys (1): fc2.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "fc1.weight is [8, 5] in model.pth but [8, 4] in the module" in message


def test_a_truncated_state_dict_fails_in_one_line(tmp_path, load_backend):
    write_eager(tmp_path, "tiny", PYTORCH)
    path = tmp_path / "tiny" / "1" / "model.pth"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BackendError) as caught:
        load_backend(tmp_path, "tiny")
    message = str(caught.value)
    assert message.startswith("model.pth cannot be read as a torch.save file: RuntimeError: ")
    assert "\n" not in message and len(message) <= 320, message  # torch_message cuts it


def test_data_parallel_prefix_gets_a_hint(tmp_path, load_backend):
    write_eager(tmp_path, "tiny", PYTORCH)
    path = tmp_path / "tiny" / "1" / "model.pth"
    state = torch.load(path, weights_only=True)
    torch.save(OrderedDict((f"module.{k}", v) for k, v in state.items()), path)
    with pytest.raises(BackendError, match=r"start with 'module\.'.*model\.module\.state_dict"):
        load_backend(tmp_path, "tiny")


def test_training_checkpoint_names_the_key_holding_the_state_dict(tmp_path, load_backend):
    net = write_eager(tmp_path, "ckpt", PYTORCH)
    path = tmp_path / "ckpt" / "1" / "model.pth"
    torch.save({"epoch": 3, "model_state": net.state_dict(), "lr": 0.1}, path)
    with pytest.raises(BackendError) as caught:
        load_backend(tmp_path, "ckpt")
    message = str(caught.value)
    assert "training checkpoint" in message and "'model_state'" in message


@pytest.mark.parametrize("trust", [False, True])
def test_state_dict_without_model_py_says_state_dict_and_how_to_serve_it(
    tmp_path, load_backend, trust
):
    module = write_cnn(tmp_path, "cnn", "pth", {"trust_pickle": trust})
    (tmp_path / "cnn" / "1" / "net.py").unlink()
    torch.save(module.state_dict(), tmp_path / "cnn" / "1" / "model.pth")
    with pytest.raises(BackendError) as caught:
        load_backend(tmp_path, "cnn")
    message = str(caught.value)
    first = message.splitlines()[0]
    assert first.startswith("model.pth is a state_dict (an OrderedDict of 6 tensors")
    assert "conv1.weight" in first and "model.py" in first
    assert "class Net(torch.nn.Module)" in message  # the example
    assert "pickled whole module" not in message


def test_whole_module_pickle_beside_its_model_py_still_needs_trust(tmp_path, load_backend):
    """A torch.save(model) whose class lives in model.py is a pickle, not a state_dict."""
    version = tmp_path / "whole" / "1"
    net = write_eager(tmp_path, "whole", PYTORCH)
    module = import_source(version, EAGER_SOURCE)
    torch.manual_seed(0)
    whole = module.TinyNet().eval()
    sys.modules["model"] = module  # pickle records the class as model.TinyNet
    try:
        torch.save(whole, version / "model.pth")
    finally:
        sys.modules.pop("model", None)
    with pytest.raises(BackendError, match=r"pickled whole module.*trust_pickle: true"):
        load_backend(tmp_path, "whole")
    write_config(tmp_path, "whole", {**PYTORCH, "trust_pickle": True})
    backend = load_backend(tmp_path, "whole")
    assert backend.file.kind == "pickle"
    x = features(2)
    np.testing.assert_allclose(
        backend.predict({"x": x})["output__0"], reference(net, x), rtol=1e-5, atol=1e-6
    )


def test_can_load_claims_model_py_with_bin_weights_but_not_bin_alone(tmp_path):
    write_eager(tmp_path, "hf", None, weights="pytorch_model.bin")
    assert PyTorchBackend.can_load(tmp_path / "hf" / "1")
    # A python model's data file is not a state_dict: its model.py defines no Module.
    (tmp_path / "hf" / "1" / "model.py").write_text(textwrap.dedent(PYTHON_MODEL))
    assert not PyTorchBackend.can_load(tmp_path / "hf" / "1")
    (tmp_path / "hf" / "1" / "model.py").unlink()
    assert not PyTorchBackend.can_load(tmp_path / "hf" / "1")  # e.g. ONNX external data


PYTHON_MODEL = """
    import numpy as np
    from dl_inference import PythonModel


    class Echo(PythonModel):
        def predict(self, inputs):
            return {"y": inputs["x"]}
"""


def test_folders_go_to_the_backend_their_files_are_for(tmp_path, serve_models):
    """No config.yaml: model.py + state_dict is pytorch's, model.py alone is python's."""
    net = write_eager(tmp_path, "eager", None)
    write_eager(tmp_path, "eager_bin", None, weights="weights.bin")
    python = tmp_path / "echo" / "1"
    python.mkdir(parents=True)
    (python / "model.py").write_text(textwrap.dedent(PYTHON_MODEL))
    # A python model with a data file beside it stays python's: its model.py names PythonModel.
    data = tmp_path / "echo_data" / "1"
    data.mkdir(parents=True)
    (data / "model.py").write_text(textwrap.dedent(PYTHON_MODEL))
    (data / "labels.txt").write_text("cat\ndog\n")
    (data / "weights.bin").write_bytes(b"\x00" * 8)  # its own data, not a state_dict
    env = serve_models(tmp_path)
    backends = {
        name: env.models.resolve(name).backend.name
        for name in ("eager", "eager_bin", "echo", "echo_data")
    }
    assert backends == {
        "eager": "pytorch",
        "eager_bin": "pytorch",
        "echo": "python",
        "echo_data": "python",
    }
    x = features(2)
    np.testing.assert_allclose(
        env.infer("eager", {"x": x}).outputs["output__0"], reference(net, x), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(env.infer("echo", {"x": x}).outputs["y"], x)


def test_state_dict_alone_fails_its_load_with_the_reason(tmp_path, serve_models):
    module = write_cnn(tmp_path, "sd", "pth", {"backend": "pytorch"})
    (tmp_path / "sd" / "1" / "net.py").unlink()
    torch.save(module.state_dict(), tmp_path / "sd" / "1" / "model.pth")
    write_cnn(tmp_path, "ok", "pt")
    env = serve_models(tmp_path)
    version = env.models.versions("sd")[0]
    assert version.state is ModelState.UNAVAILABLE
    assert "is a state_dict" in version.reason and "model.py" in version.reason
    assert env.infer("ok", {"x": digits(1)}).outputs["output__0"].shape == (1, 10)


def test_no_model_file_message_names_the_eager_pattern(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.py with the module's class"):
        _loading.find_model_file(tmp_path, None)


def test_the_readme_example_is_served_as_written(tmp_path, serve_models, monkeypatch):
    """plugins/pytorch/README.md's model.py, saved as its folder listing says."""
    from dl_inference.testing.markdown import code_block

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    source = code_block(readme, "python", "# models/tiny/1/model.py").code
    saving = code_block(readme, "python", "torch.save(net.state_dict()").code
    version = tmp_path / "models" / "tiny" / "1"
    module = import_source(version, source)
    torch.manual_seed(3)
    net = module.TinyNet().eval()
    monkeypatch.chdir(tmp_path)  # the README's path is relative to the repository's folder
    exec(saving, {"torch": torch, "net": net})
    assert (version / "model.pth").is_file()
    env = serve_models(tmp_path / "models")
    assert env.models.resolve("tiny").backend.name == "pytorch"
    x = features(2)
    np.testing.assert_allclose(
        env.infer("tiny", {"x": x}).outputs["output__0"], reference(net, x), rtol=1e-5, atol=1e-6
    )


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)
def test_eager_model_on_cuda_matches_the_cpu_module(tmp_path, load_backend):
    net = write_eager(tmp_path, "tiny", {**PYTORCH, "device": "cuda:0"})
    backend = load_backend(tmp_path, "tiny")
    assert next(backend.model.parameters()).device.type == "cuda"
    x = features(4)
    out = backend.predict({"x": x})["output__0"]
    np.testing.assert_allclose(out, reference(net, x), rtol=1e-3, atol=1e-4)
