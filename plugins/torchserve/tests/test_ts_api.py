"""The ts API handlers import: Context, RequestProcessor, ts.utils.util, BaseHandler."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from ts.context import Context, RequestProcessor
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import (
    PredictionException,
    list_classes_from_module,
    load_label_mapping,
    map_class_to_label,
)

from dl_inference import isolated_imports


def context(model_dir: Path, manifest: dict | None = None, batch_size: int = 1) -> Context:
    return Context("m", str(model_dir), manifest or {"model": {}}, batch_size, None, "0.12.0")


def test_context_properties_and_per_request_state(tmp_path: Path) -> None:
    ctx = context(tmp_path, batch_size=4)
    assert ctx.system_properties == {
        "model_dir": str(tmp_path),
        "gpu_id": None,
        "batch_size": 4,
        "server_name": "MMS",
        "server_version": "0.12.0",
        "limit_max_image_pixels": True,
    }
    ctx.request_ids = {0: "a", 1: "b"}
    ctx.request_processor = [RequestProcessor({"X-Key": "1"}), RequestProcessor({})]
    assert ctx.get_request_id(1) == "b" and ctx.get_request_header(0, "X-Key") == "1"
    assert ctx.get_request_header(1, "X-Key") is None
    ctx.set_response_status(201, "Made", idx=1)
    ctx.set_response_content_type(1, "text/csv")
    assert ctx.get_response_status(0) == (200, None)
    assert ctx.get_response_status(1) == (201, "Made")
    assert ctx.get_response_content_type(1) == "text/csv"
    ctx.set_all_response_status(202)
    assert [ctx.get_response_status(i)[0] for i in (0, 1)] == [202, 202]
    ctx.metrics.add_time("HandlerTime", 1.5, None, "ms")  # accepted, kept in memory
    assert ctx.metrics.get_metric("HandlerTime").value == 1.5


def test_label_mapping_forms(tmp_path: Path) -> None:
    path = tmp_path / "index_to_name.json"
    assert load_label_mapping(str(path)) is None  # missing: no names
    path.write_text(json.dumps({"0": "cat", "1": ["n02", "dog"]}))
    assert load_label_mapping(str(path)) == {"0": "cat", "1": "dog"}
    path.write_text(json.dumps({"object_type_names": ["a", "b"]}))
    assert load_label_mapping(str(path)) == {"0": "a", "1": "b"}
    path.write_text(json.dumps(["a"]))
    with pytest.raises(Exception, match="should be in"):
        load_label_mapping(str(path))


def test_map_class_to_label() -> None:
    probs = [[0.7, 0.2], [0.6, 0.3]]
    assert map_class_to_label(probs) == [{"0": 0.7, "1": 0.2}, {"0": 0.6, "1": 0.3}]
    mapped = map_class_to_label(probs, {"3": "x", "5": "y"}, [[3, 5], [5, 3]])
    assert mapped == [{"x": 0.7, "y": 0.2}, {"y": 0.6, "x": 0.3}]
    with pytest.raises(Exception, match="to list"):
        map_class_to_label((0.1,))  # type: ignore[arg-type]


def test_list_classes_from_module_and_prediction_exception() -> None:
    module = types.ModuleType("handlers_here")
    exec("from ts.context import Context\nclass A: pass\nclass B(A): pass", module.__dict__)
    assert [c.__name__ for c in list_classes_from_module(module)] == ["A", "B"]
    assert list_classes_from_module(module, module.B) == [module.B]
    error = PredictionException("bad", 422)
    assert (error.message, error.error_code, str(error)) == ("bad", 422, "bad : 422")


def test_basehandler_loads_torchscript_and_runs_the_batch(tmp_path: Path) -> None:
    torch.jit.script(torch.nn.Linear(2, 1)).save(str(tmp_path / "m.pt"))
    (tmp_path / "index_to_name.json").write_text('{"0": "only"}')
    handler = BaseHandler()
    ctx = context(tmp_path, {"model": {"serializedFile": "m.pt"}})
    handler.initialize(ctx)
    assert handler.initialized and handler.mapping == {"0": "only"}
    ctx.request_processor = [RequestProcessor({}), RequestProcessor({})]
    answers = handler.handle([[1.0, 2.0], [3.0, 4.0]], ctx)
    expected = handler.model(torch.tensor([[1.0, 2.0], [3.0, 4.0]])).tolist()
    assert answers == expected and len(answers) == 2
    ctx.request_processor = [RequestProcessor({"describe": "True"})]
    assert handler.handle([[0.0, 0.0]], ctx) == [None]


def test_basehandler_loads_an_eager_model_from_model_file(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(
        "import torch\n\nclass Net(torch.nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.fc = torch.nn.Linear(2, 2)\n\n"
        "    def forward(self, x):\n        return self.fc(x)\n"
    )
    state = {"fc.weight": torch.eye(2) * 3, "fc.bias": torch.zeros(2)}
    torch.save(state, tmp_path / "w.pth")
    handler = BaseHandler()
    manifest = {"model": {"serializedFile": "w.pth", "modelFile": "net.py"}}
    with isolated_imports(tmp_path):
        handler.initialize(context(tmp_path, manifest))
    assert "net" not in sys.modules  # the archive's module did not stay importable
    out = handler.inference(handler.preprocess([[1.0, 2.0]]))
    assert handler.postprocess(out) == [[3.0, 6.0]]


def test_basehandler_without_weights_says_so(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="No model weights"):
        BaseHandler().initialize(context(tmp_path, {"model": {"serializedFile": "m.onnx"}}))
