"""``pytorch-to-onnx``: ``dl-inference convert`` as users run it, and the converter's checks."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dl_inference import BackendError, ConfigError, install_hint
from dl_inference_onnx.convert import PyTorchToOnnx


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dl_inference", "convert", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def net() -> Any:
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5)
    ).eval()


def torch_out(module: Any, *arrays: np.ndarray) -> Any:
    with torch.no_grad():
        return module(*(torch.from_numpy(a) for a in arrays))


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    module = net()
    path = tmp_path_factory.mktemp("torch") / "model.pt"
    torch.jit.script(module).save(str(path))
    return path, module


def test_torchscript_to_onnx_through_the_cli(
    scripted: tuple[Path, Any], tmp_path: Path, ort_run: Any
) -> None:
    source, module = scripted
    target = tmp_path / "repo" / "net" / "1" / "model.onnx"
    done = cli(str(source), str(target), "--input", "x:FP32:1,3,8,8")
    assert done.returncode == 0, done.stderr
    assert f"{source} -> {target} (pytorch-to-onnx): outputs match" in done.stdout
    assert "on inputs x [1, 3, 8, 8] and x [4, 3, 8, 8]" in done.stdout
    assert "dynamic axes: x:0" in done.stdout
    # The file serves other batch sizes and agrees with the torch original on them.
    x = np.random.default_rng(5).standard_normal((4, 3, 8, 8)).astype(np.float32)
    (got,) = ort_run(target, {"x": x})
    np.testing.assert_allclose(got, torch_out(module, x).numpy(), rtol=1e-4, atol=1e-5)
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]


def test_pickled_module_needs_trust_pickle(tmp_path: Path, ort_run: Any) -> None:
    module = net()
    source = tmp_path / "model.pth"
    torch.save(module, str(source))  # torch.nn classes only: importable in the subprocess
    target = tmp_path / "model.onnx"
    refused = cli(str(source), str(target), "--input", "x:FP32:2,3,8,8")
    assert refused.returncode == 2
    assert "pass --trust-pickle;" in refused.stderr and "runs code" in refused.stderr
    assert not target.exists()
    done = cli(str(source), str(target), "--input", "x:FP32:2,3,8,8", "--trust-pickle")
    assert done.returncode == 0, done.stderr
    assert "on inputs x [2, 3, 8, 8] and x [5, 3, 8, 8]" in done.stdout
    x = np.random.default_rng(6).standard_normal((3, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(
        ort_run(target, {"x": x})[0], torch_out(module, x).numpy(), rtol=1e-4, atol=1e-5
    )


class Heads(torch.nn.Module):
    """Two inputs (int64 ids, float scale), two outputs (float vectors, int64 argmax)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 3)

    def forward(self, ids: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vectors = self.embed(ids).sum(1) * scale
        return vectors, vectors.argmax(1)


def test_several_inputs_and_outputs(tmp_path: Path, ort_run: Any) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    module = Heads().eval()
    source = tmp_path / "heads.pt"
    torch.jit.script(module).save(str(source))
    target = tmp_path / "heads.onnx"
    report = PyTorchToOnnx().convert(
        source,
        target,
        sample_inputs={
            "ids": np.array([[1, 2, 3]], np.int64),
            "scale": np.array([[2.0]], np.float32),
        },
        options={"output_names": "vectors,best"},
    )
    assert "inputs ids, scale, outputs vectors, best" in report
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["ids", "scale"]
    assert [o.name for o in session.get_outputs()] == ["vectors", "best"]
    ids = np.array([[0, 9, 4], [5, 5, 5], [7, 1, 2]], np.int64)
    scale = np.array([[1.0], [-1.0], [0.5]], np.float32)
    vectors, best = ort_run(target, {"ids": ids, "scale": scale})
    expected_vectors, expected_best = torch_out(module, ids, scale)
    np.testing.assert_allclose(vectors, expected_vectors.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(best, expected_best.numpy())


# Eager modules, pickled whole (trust_pickle): torch runs them with any batch, while the
# exporter traces them once at the sample's batch. Module level, so pickle finds them.
class Baked(torch.nn.Module):
    """Takes a Python int from the batch size: the ONNX graph keeps the sample's batch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(12, 2)

    def forward(self, x: Any) -> Any:
        return self.fc(x.reshape(int(x.shape[0]), -1))


class Branchy(torch.nn.Module):
    """Branches on the batch size: the exporter keeps the branch the sample took."""

    def forward(self, x: Any) -> Any:
        return x * 2 if x.shape[0] == 1 else x * 3


def pickled(module: Any, path: Path) -> Path:
    torch.save(module.eval(), str(path))
    return path


def test_graph_that_fixes_the_batch_is_refused(tmp_path: Path, ort_run: Any) -> None:
    source = pickled(Baked(), tmp_path / "baked.pth")
    target = tmp_path / "baked.onnx"
    sample = {"x": np.ones((1, 3, 4), np.float32)}
    with pytest.raises(BackendError) as caught:
        PyTorchToOnnx().convert(source, target, sample_inputs=sample, options={}, trust_pickle=True)
    message = str(caught.value)
    assert "cannot run the exported model on inputs x [1, 3, 4]" in message
    assert "does not run with other sizes on the dynamic axes" in message
    assert "x.reshape(x.shape[0], ...)" in message and "--static" in message
    assert not target.exists()
    # Without a dynamic axis the same model converts, for its fixed batch.
    report = PyTorchToOnnx().convert(
        source, target, sample_inputs=sample, options={}, trust_pickle=True, dynamic_axes={}
    )
    assert "on inputs x [1, 3, 4];" in report and "dynamic axes: none" in report
    assert ort_run(target, sample)[0].shape == (1, 2)


def test_traced_module_that_fixes_the_batch_says_so(tmp_path: Path) -> None:
    source = tmp_path / "traced.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's own warning about int()
        torch.jit.trace(Baked().eval(), torch.zeros(1, 3, 4)).save(str(source))
    with pytest.raises(ConfigError) as caught:
        PyTorchToOnnx().convert(
            source,
            tmp_path / "t.onnx",
            sample_inputs={"x": np.ones((1, 3, 4), np.float32)},
            options={},
        )
    message = str(caught.value)
    assert "the torch model itself does not run on the samples resized" in message
    assert "(x [4, 3, 4])" in message and "--static" in message


def test_outputs_that_differ_are_refused(tmp_path: Path) -> None:
    source = pickled(Branchy(), tmp_path / "branchy.pth")
    target = tmp_path / "branchy.onnx"
    with pytest.raises(BackendError) as caught:
        PyTorchToOnnx().convert(
            source,
            target,
            sample_inputs={"x": np.ones((1, 2), np.float32)},
            options={},
            trust_pickle=True,
        )
    message = str(caught.value)
    assert "output 'output' differs between torch and onnxruntime by 1 " in message
    assert "the file was not written" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["branchy.pth"]


@pytest.mark.parametrize(
    ("options", "inputs", "message"),
    [
        (
            {"opset_version": "17"},
            True,
            "has no option 'opset_version'; its options are: opset, output_names, exporter",
        ),
        ({"opset": "latest"}, True, "--option opset=latest: give a number"),
        ({"exporter": "fx"}, True, "use torchscript (default) or dynamo"),
        ({"exporter": "dynamo"}, True, "exports eager modules (a pickled .pth), not TorchScript"),
        ({"output_names": "a,b"}, True, "names 2 output(s), the model returns 1"),
        ({}, False, "needs sample inputs: give --input NAME:DATATYPE:SHAPE"),
    ],
)
def test_bad_options_say_what_to_do(
    scripted: tuple[Path, Any], tmp_path: Path, options: dict[str, str], inputs: bool, message: str
) -> None:
    samples = {"x": np.ones((1, 3, 8, 8), np.float32)} if inputs else {}
    with pytest.raises(ConfigError) as caught:
        PyTorchToOnnx().convert(
            scripted[0], tmp_path / "m.onnx", sample_inputs=samples, options=options
        )
    assert message in str(caught.value)


def test_wrong_sample_shape_and_state_dict(scripted: tuple[Path, Any], tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"raised on the sample inputs \(x \[1, 8\] float32\)"
    ) as e:
        PyTorchToOnnx().convert(
            scripted[0],
            tmp_path / "m.onnx",
            sample_inputs={"x": np.ones((1, 8), np.float32)},
            options={},
        )
    # The TorchScript error's reason, not its two tracebacks.
    assert "RuntimeError: Expected 3D (unbatched) or 4D (batched) input to conv2d" in str(e.value)
    assert "Traceback" not in str(e.value)
    weights = tmp_path / "weights.pth"
    torch.save(net().state_dict(), str(weights))
    with pytest.raises(ConfigError, match="holds a state_dict"):
        PyTorchToOnnx().convert(
            weights,
            tmp_path / "m.onnx",
            sample_inputs={"x": np.ones((1, 3, 8, 8), np.float32)},
            options={},
            trust_pickle=True,
        )


def test_cli_picks_this_converter_by_file_names(scripted: tuple[Path, Any], tmp_path: Path) -> None:
    done = cli(str(scripted[0]), str(tmp_path / "m.onnx"), "--input", "x:FP32:1,3,4,4")
    # A 4x4 image is too small for the network: the torch model's own error comes back.
    assert done.returncode != 0
    assert "dl-inference: error: the torch model raised on the sample inputs" in done.stderr


BERT_LIKE = """
import torch


class TinyBert(torch.nn.Module):
    # input_ids [batch, seq] int64 -> [batch, seq, 4]: embedding, then a linear head.

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(30, 8)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, input_ids):
        return self.head(self.embed(input_ids))
"""


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """``model.pth``: a BERT-like module pickled whole, its class in ``tiny_bert.py`` beside it
    (not importable from the test's process path: the converter must find it there)."""
    folder = tmp_path_factory.mktemp("bert")
    (folder / "tiny_bert.py").write_text(BERT_LIKE)
    sys.path.insert(0, str(folder))
    try:
        torch.manual_seed(0)
        module = __import__("tiny_bert").TinyBert().eval()
        torch.save(module, str(folder / "model.pth"))
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("tiny_bert", None)
    return folder / "model.pth", module


def ids(batch: int, seq: int) -> np.ndarray:
    return np.random.default_rng(seq).integers(0, 30, (batch, seq)).astype(np.int64)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_sequence_axis_is_dynamic_when_named(
    bert: tuple[Path, Any], tmp_path: Path, ort_run: Any, exporter: str
) -> None:
    source, module = bert
    target = tmp_path / "bert.onnx"
    done = cli(
        str(source), str(target), "--trust-pickle", "--input", "input_ids:INT64:1,7",
        "--dynamic", "input_ids:0,1", "--option", f"exporter={exporter}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "on inputs input_ids [1, 7] and input_ids [4, 10]" in done.stdout
    assert f"{exporter} exporter" in done.stdout and "dynamic axes: input_ids:0,1" in done.stdout
    for batch, seq in [(1, 5), (3, 9)]:
        x = ids(batch, seq)
        np.testing.assert_allclose(
            ort_run(target, {"input_ids": x})[0], torch_out(module, x).numpy(), atol=1e-5
        )


def test_without_dynamic_the_sequence_keeps_the_sample_length(
    bert: tuple[Path, Any], tmp_path: Path, ort_run: Any
) -> None:
    import onnxruntime as ort

    source, module = bert
    target = tmp_path / "bert.onnx"
    done = cli(str(source), str(target), "--trust-pickle", "--input", "input_ids:INT64:2,7")
    assert done.returncode == 0, done.stderr
    assert "dynamic axes: input_ids:0" in done.stdout
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 7]
    x = ids(3, 7)
    np.testing.assert_allclose(
        ort_run(target, {"input_ids": x})[0], torch_out(module, x).numpy(), atol=1e-5
    )
    with pytest.raises(Exception, match="input_ids"):
        ort_run(target, {"input_ids": ids(3, 9)})


def test_dynamo_without_onnxscript_names_the_install(
    bert: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now fails
    with pytest.raises(ConfigError) as caught:
        PyTorchToOnnx().convert(
            bert[0],
            tmp_path / "m.onnx",
            sample_inputs={"input_ids": ids(2, 7)},
            options={"exporter": "dynamo"},
            trust_pickle=True,
        )
    message = str(caught.value)
    assert "needs the onnxscript package" in message
    assert install_hint("dl-inference-onnx") in message  # pip install ./plugins/onnx ...
    assert "pip install ./plugins/onnx" in message and "pip install onnxscript" in message


def test_without_torch_the_converter_says_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now fails
    with pytest.raises(ConfigError) as caught:
        PyTorchToOnnx().convert(
            tmp_path / "m.pt",
            tmp_path / "m.onnx",
            sample_inputs={"x": np.ones((1, 4), np.float32)},
            options={},
        )
    assert "torch, which is not installed: pip install torch" in str(caught.value)


def test_onnxscript_is_a_dependency_of_the_plugin() -> None:
    """Installed with the plugin (not an extra that ``make test`` would skip), and pinned in
    the constraints at the version that is installed here."""
    import tomllib
    from importlib.metadata import version

    root = Path(__file__).resolve().parents[3]
    project = tomllib.loads((root / "plugins/onnx/pyproject.toml").read_text())["project"]
    assert any(d.startswith("onnxscript") for d in project["dependencies"])
    pins = (root / "requirements/constraints.txt").read_text().splitlines()
    assert f"onnxscript=={version('onnxscript')}" in pins
