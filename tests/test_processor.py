"""One processor.py, the kernel's, over every backend; and where processor.py is found.

The cross-backend test writes the same ``processor.py`` beside four models computing
``y = 2x + 1`` — a python model, TorchScript, ONNX and a SavedModel — and checks that
each answers the same, through the kernel's request path (``Runtime.infer``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from dl_inference import BackendError, InvalidInput, TensorSpec
from dl_inference.testing import ServerProcess, load_repository, write_python_model

# torch 2.10+ deprecates TorchScript; the pytorch backend still serves it.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PROCESSOR = """
    import numpy as np

    def preprocess(csv, **kwargs):
        # "1,2,3,4" (one BYTES element) -> a float32 row; bad numbers are the client's fault.
        return np.array([[float(v) for v in csv.decode().split(",")]], dtype=np.float32)

    def run_model(model, x, **kwargs):
        return model(model(x))  # twice: 4x + 3

    def postprocess(y, **kwargs):
        y = np.asarray(y, dtype=np.float32)
        return {"total": np.array([y.sum() * float(kwargs.get("scale", 1))], np.float32), "row": y}
"""

CONFIG = {
    "inputs": [{"name": "CSV", "datatype": "BYTES", "shape": [1]}],
    "outputs": [
        {"name": "total", "datatype": "FP32", "shape": [1]},
        {"name": "row", "datatype": "FP32", "shape": [1, 4]},
    ],
}

PYTHON_MODEL = """
    from dl_inference import PythonModel

    class Affine(PythonModel):
        def predict(self, inputs, **parameters):
            (x,) = inputs.values()  # preprocess() named nothing: the kernel calls it input__0
            return {"y": x * 2 + 1}
"""


def write_python(root: Path) -> None:
    write_python_model(root, "python", PYTHON_MODEL)


def write_pytorch(root: Path) -> None:
    torch = pytest.importorskip("torch")

    class Affine(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return x * 2 + 1

    (root / "pytorch" / "1").mkdir(parents=True)
    traced = torch.jit.trace(Affine(), torch.zeros(2, 4))
    torch.jit.save(traced, root / "pytorch" / "1" / "model.pt")


def write_onnx(root: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["x2"]),
            helper.make_node("Add", ["x2", "one"], ["y"]),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [two, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (root / "onnx" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "onnx" / "1" / "model.onnx"))


def write_tensorflow(root: Path) -> None:
    tf = pytest.importorskip("tensorflow")

    class Affine(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"y": x * 2 + 1}

    module = Affine()
    tf.saved_model.save(
        module, str(root / "tensorflow" / "1"), signatures={"serving_default": module.serve}
    )


BACKENDS = {
    "python": write_python,
    "pytorch": write_pytorch,
    "onnx": write_onnx,
    "tensorflow": write_tensorflow,
}


def csv(text: bytes) -> dict[str, np.ndarray]:
    data = np.empty(1, dtype=object)
    data[0] = text
    return {"CSV": data}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("processor")
    for name, write in BACKENDS.items():
        write(root)
        (root / name / "config.yaml").write_text(yaml.safe_dump({"backend": name, **CONFIG}))
        # The documented place beside config.yaml for two, the version folder for the others.
        folder = root / name if name in ("python", "onnx") else root / name / "1"
        (folder / "processor.py").write_text(textwrap.dedent(PROCESSOR))
    env = load_repository(root)
    yield env
    env.close()


def test_one_processor_gives_the_same_results_on_every_backend(env: Any) -> None:
    x = np.array([1.0, 2.0, 3.5, -1.0], np.float32)
    row = (x * 2 + 1) * 2 + 1  # run_model applies the model twice
    for name in BACKENDS:
        assert env.models.resolve(name).ready, env.models.resolve(name).reason
        outputs = env.infer(name, csv(b"1,2,3.5,-1"), parameters={"scale": 3}).outputs
        assert sorted(outputs) == ["row", "total"], name
        np.testing.assert_allclose(outputs["row"], [row], rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(outputs["total"], [row.sum() * 3], rtol=1e-6, err_msg=name)
        assert outputs["total"].dtype == np.float32, name


def test_clients_are_told_and_checked_against_the_config_on_every_backend(env: Any) -> None:
    for name in BACKENDS:
        metadata = env.runtime.model_metadata(name)
        assert metadata.inputs == [TensorSpec("CSV", "BYTES", (1,))], name
        assert [s.name for s in metadata.outputs] == ["total", "row"], name
        # The model's own input (x, FP32) is not what clients send.
        with pytest.raises(InvalidInput, match="no input named 'x'"):
            env.infer(name, {"x": np.zeros((1, 4), np.float32)})


def test_bad_data_is_the_clients_error_naming_the_processor_line(env: Any) -> None:
    for name in BACKENDS:
        with pytest.raises(InvalidInput) as caught:
            env.infer(name, csv(b"1,two,3,4"))
        assert "preprocess()" in str(caught.value) and "processor.py:6" in str(caught.value)


def test_parameters_named_like_hook_arguments_are_refused_on_every_backend(env: Any) -> None:
    for name in BACKENDS:
        for parameter in ("model", "x", "csv"):
            with pytest.raises(InvalidInput) as caught:
                env.infer(name, csv(b"1,2,3,4"), parameters={parameter: 1})
            message = str(caught.value)
            assert f"request parameter {parameter!r}" in message, (name, message)
            assert "positional-only" in message and "/" in message
        # The server keeps serving, and other names still reach the hooks.
        total = env.infer(name, csv(b"1,1,1,1"), parameters={"scale": 2}).outputs["total"]
        np.testing.assert_allclose(total, [7 * 4 * 2])


# -- where processor.py is found, and what the hooks see ---------------------------------------

ECHO_MODEL = """
    import numpy as np
    from dl_inference import PythonModel

    class Echo(PythonModel):
        def predict(self, inputs, /, **parameters):
            return dict(inputs)
"""


def serve(root: Path, name: str, processor: str, config: str = "", where: str = "1") -> Any:
    write_python_model(root, name, ECHO_MODEL, config)
    (root / name / where / "processor.py").write_text(textwrap.dedent(processor))
    return load_repository(root)


def test_the_version_folders_processor_wins_over_the_models(tmp_path: Path) -> None:
    write_python_model(tmp_path, "m", ECHO_MODEL)
    (tmp_path / "m" / "processor.py").write_text("def postprocess(y):\n    return y + 100\n")
    (tmp_path / "m" / "1" / "processor.py").write_text("def postprocess(y):\n    return y + 1\n")
    env = load_repository(tmp_path)
    try:
        out = env.infer("m", {"x": np.array([1.0], np.float32)}).outputs
        np.testing.assert_allclose(out["output__0"], [2.0])  # unnamed: no declared outputs
    finally:
        env.close()


def test_a_processor_without_hooks_fails_the_load_saying_so(tmp_path: Path) -> None:
    env = serve(tmp_path, "m", "def preproces(x):\n    return x\n")
    try:
        version = env.models.versions("m")[0]
        assert not version.ready
        assert "defines none of preprocess, run_model, postprocess" in version.reason
    finally:
        env.close()


def test_a_lone_bytes_element_arrives_as_bytes_unless_the_model_batches(tmp_path: Path) -> None:
    probe = """
        import numpy as np

        def preprocess(x, **kwargs):
            return {"seen": np.array([type(x).__name__.encode()], dtype=object)}
    """
    write_python_model(tmp_path, "batching", ECHO_MODEL, "max_batch_size: 4\n")
    (tmp_path / "batching" / "processor.py").write_text(textwrap.dedent(probe))
    env = serve(tmp_path, "single", probe)
    try:
        one = np.array([b"abc"], dtype=object)
        assert env.infer("single", {"t": one}).outputs["seen"].tolist() == [b"bytes"]
        two = np.array([b"a", b"b"], dtype=object)
        assert env.infer("single", {"t": two}).outputs["seen"].tolist() == [b"ndarray"]
        rows = np.array([[b"abc"]], dtype=object)
        assert env.infer("batching", {"t": rows}).outputs["seen"].tolist() == [b"ndarray"]
    finally:
        env.close()


def test_several_inputs_arrive_as_a_dict_in_declared_order(tmp_path: Path) -> None:
    probe = """
        import numpy as np

        def preprocess(x, **kwargs):
            return {"order": np.array([",".join(x).encode()], dtype=object)}
    """
    config = """
        inputs:
          - {name: b, datatype: FP32, shape: [1]}
          - {name: a, datatype: FP32, shape: [1]}
    """
    env = serve(tmp_path, "m", probe, config)
    try:
        one = np.ones(1, np.float32)
        out = env.infer("m", {"a": one, "b": one}).outputs
        assert out["order"].tolist() == [b"b,a"]
    finally:
        env.close()


def test_unnamed_results_take_the_declared_names_else_output_n(tmp_path: Path) -> None:
    tuple_out = """
        def postprocess(y, **kwargs):
            return y, y * 2
    """
    env = serve(tmp_path, "m", tuple_out)
    try:
        out = env.infer("m", {"x": np.array([1.0], np.float32)}).outputs
        assert sorted(out) == ["output__0", "output__1"]
        np.testing.assert_allclose(out["output__1"], [2.0])
    finally:
        env.close()
    config = """
        outputs:
          - {name: one, datatype: FP32, shape: [1]}
    """
    env = serve(tmp_path / "declared", "m", tuple_out, config)
    try:
        with pytest.raises(BackendError, match=r"2 output value.*its outputs are one"):
            env.infer("m", {"x": np.array([1.0], np.float32)})
    finally:
        env.close()


def test_errors_in_later_hooks_are_the_models_naming_the_line(tmp_path: Path) -> None:
    failing = """
        def postprocess(y, **kwargs):
            raise ValueError("postprocess broke")
    """
    env = serve(tmp_path, "m", failing)
    try:
        with pytest.raises(
            BackendError,
            match=r"postprocess\(\) raised ValueError: postprocess broke \(processor.py:3\)",
        ):
            env.infer("m", {"x": np.array([1.0], np.float32)})
    finally:
        env.close()


# -- the seed's meta={"tags": ...} and model(x, **tags) ----------------------------------------

META_PROBE = """
    import numpy as np

    def preprocess(x, **kwargs):
        # Written to the seed's docs: the request's tags under kwargs["meta"]["tags"].
        tags = kwargs["meta"]["tags"]
        return x * float(tags.get("scale", 1))

    def postprocess(y, **kwargs):
        names = ",".join(sorted(kwargs["meta"]["tags"]))
        return {"y": y, "tags": np.array([names.encode()], dtype=object)}
"""


def test_hooks_get_the_request_tags_as_meta_tags(tmp_path: Path) -> None:
    env = serve(tmp_path, "m", META_PROBE)
    try:
        x = {"x": np.array([2.0], np.float32)}
        out = env.infer("m", x, parameters={"taskId": 39.0, "scale": 3}).outputs
        np.testing.assert_allclose(out["y"], [6.0])
        assert out["tags"].tolist() == [b"scale,taskId"]
        # No parameters at all: meta["tags"] is there, empty.
        out = env.infer("m", x).outputs
        np.testing.assert_allclose(out["y"], [2.0])
        assert out["tags"].tolist() == [b""]
        # A parameter named meta would be shadowed: the client's error, named.
        with pytest.raises(InvalidInput, match="request parameter 'meta' is reserved"):
            env.infer("m", x, parameters={"meta": 1})
    finally:
        env.close()


TAG_NET = """
    import torch

    class TagNet(torch.nn.Module):
        # The seed's model(x, **tags): every tag arrives as a keyword.
        def forward(self, x, taskId=None, scale=1.0):
            return x * scale + (0.0 if taskId is None else 1000.0)
"""

# No run_model: the seed's predictor then calls model(x, **tags) when there are two or more.
TAG_PROCESSOR = """
    import numpy as np

    def preprocess(x, **kwargs):
        return x

    def postprocess(y, **kwargs):
        return y
"""


def write_tag_net(
    root: Path, name: str = "tagnet", processor: str | None = TAG_PROCESSOR, net: str = TAG_NET
) -> None:
    """``<root>/<name>/1/`` with tag_net.py and a whole-module ``model.pth`` of TagNet."""
    torch = pytest.importorskip("torch")
    import importlib.util
    import sys

    folder = root / name / "1"
    folder.mkdir(parents=True)
    (folder / "tag_net.py").write_text(textwrap.dedent(net))
    spec = importlib.util.spec_from_file_location("tag_net", folder / "tag_net.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tag_net"] = module  # pickle saves the class as tag_net.TagNet
    try:
        spec.loader.exec_module(module)
        torch.save(module.TagNet(), folder / "model.pth")
    finally:
        del sys.modules["tag_net"]
    config = {
        "backend": "pytorch",
        "trust_pickle": True,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
    }
    (root / name / "config.yaml").write_text(yaml.safe_dump(config))
    if processor is not None:
        (folder / "processor.py").write_text(textwrap.dedent(processor))


def test_without_run_model_more_than_one_tag_calls_the_model_with_them(tmp_path: Path) -> None:
    write_tag_net(tmp_path)
    write_tag_net(tmp_path, "plain", processor=None)
    env = load_repository(tmp_path)
    try:
        x = {"x": np.array([1.0, 2.0], np.float32)}
        out = env.infer("tagnet", x, parameters={"taskId": 39.0, "scale": 3.0}).outputs
        np.testing.assert_allclose(out["y"], [1003.0, 1006.0])
        # One tag (the seed's clients' taskId alone): model(x), as the seed does.
        out = env.infer("tagnet", x, parameters={"taskId": 39.0}).outputs
        np.testing.assert_allclose(out["y"], [1.0, 2.0])
        # A tag forward() cannot take is the client's error, naming the rule.
        with pytest.raises(InvalidInput, match=r"model\(x, \*\*tags\).*unexpected keyword"):
            env.infer("tagnet", x, parameters={"taskId": 39.0, "colour": "red"})
        # Without processor.py the model is called as model(x), as the seed's default
        # processor.py's run_model does.
        out = env.infer("plain", x, parameters={"taskId": 39.0, "scale": 3.0}).outputs
        np.testing.assert_allclose(out["y"], [1.0, 2.0])
    finally:
        env.close()


# -- end to end: a real server, the seed's PytorchPredict (Seldon) and V2 ----------------------

SEED_TAG_NET = """
    import torch

    class TagNet(torch.nn.Module):
        def forward(self, x, taskId=None, scale=1.0, **others):
            return x * scale + (0.0 if taskId is None else 1000.0)
"""

SEED_PROCESSOR = """
    import torch

    def preprocess(x, **kwargs):
        # The seed's docs' way to read the request's tags.
        return torch.as_tensor(x) + float(kwargs["meta"]["tags"].get("shift", 0))

    def postprocess(y, **kwargs):
        return y.numpy()
"""


def test_seed_processor_sees_meta_tags_over_seldon_and_v2(tmp_path: Path) -> None:
    """The seed's PyTorch path (PytorchPredict with meta.tags taskId) and V2 parameters
    reach a real PyTorch model's processor.py as meta["tags"] and model(x, **tags)."""
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("dl_inference_seldon")
    pytest.importorskip("dl_inference_pytorch")
    tritonclient = pytest.importorskip("tritonclient.grpc")
    from dl_inference_seldon._proto import seldon_pb2 as pb

    # The seed names models by task id.
    write_tag_net(tmp_path, "39", processor=SEED_PROCESSOR, net=SEED_TAG_NET)
    config = yaml.safe_load((tmp_path / "39" / "config.yaml").read_text())
    config["inputs"] = [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
    config["outputs"] = [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]
    (tmp_path / "39" / "config.yaml").write_text(yaml.safe_dump(config))
    x = [1.0, 2.0]
    expected = [(v + 1.0) * 2.0 + 1000.0 for v in x]  # shift 1, scale 2, a taskId

    with ServerProcess(["--model-repository", str(tmp_path)]) as server:
        # As PyTorchMmoe.java builds it: data.tensor, meta.tags taskId (a number).
        request = pb.SeldonMessage()
        request.data.tensor.shape.extend([1, 2])
        request.data.tensor.values.extend(x)
        request.meta.tags["taskId"].number_value = 39
        request.meta.tags["scale"].number_value = 2
        request.meta.tags["shift"].number_value = 1
        with grpc.insecure_channel(server.grpc_address) as channel:
            predict = channel.unary_unary(
                "/com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService/PytorchPredict",
                request_serializer=pb.SeldonMessage.SerializeToString,
                response_deserializer=pb.SeldonMessage.FromString,
            )
            reply = predict(request, timeout=60)
        np.testing.assert_allclose(reply.data.tensor.values, expected, rtol=1e-6)

        client = tritonclient.InferenceServerClient(server.grpc_address)
        tensor = tritonclient.InferInput("x", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.array([x], np.float32))
        result = client.infer("39", [tensor], parameters={"taskId": 39, "scale": 2.0, "shift": 1.0})
        np.testing.assert_allclose(result.as_numpy("y"), [expected], rtol=1e-6)
        client.close()
