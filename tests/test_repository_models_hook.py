"""dli_repository_models: a plugin contributes models it finds as files in the repository."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from dl_inference import hookimpl
from dl_inference.kernel.config.schema import ServerConfig
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.runtime import Runtime
from dl_inference.server.composition import Server
from dl_inference.spi.errors import ConfigError
from dl_inference.spi.types import InferRequest, RequestContext
from dl_inference.testing import write_python_model

CONFIG = """
    max_batch_size: 0
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


def constant_model(value: int) -> str:
    return f"""
        from dl_inference import PythonModel

        class Constant(PythonModel):
            def predict(self, inputs):
                return {{"y": inputs["x"] * 0 + {value}}}
    """


def archive_plugin(cache: Path) -> types.ModuleType:
    """A plugin that 'unpacks' every ``<name>.pack`` file (its text: the constant) into
    ``cache/<name>/1/model.py``."""
    module = types.ModuleType("packs")

    @hookimpl
    def dli_repository_models(root: Path) -> list[tuple[str, Path]]:
        found = []
        for pack in sorted(root.glob("*.pack")):
            value = int(pack.read_text())
            found.append(
                (pack.stem, write_python_model(cache, pack.stem, constant_model(value), CONFIG))
            )
        return found

    module.dli_repository_models = dli_repository_models  # type: ignore[attr-defined]
    return module


def server(root: Path, cache: Path, models: dict | None = None) -> Server:
    plugins = PluginHost(entry_points=[]).load()
    plugins.pm.register(archive_plugin(cache), name="packs")
    config = ServerConfig.model_validate({"model_repository": str(root), "models": models or {}})
    return Server(config, plugins)


async def answer(server: Server, model: str) -> float:
    await server.models.load_all()
    runtime = Runtime(server.plugins, server.models, access_log=False)
    request = InferRequest(model, {"x": np.ones(2, np.float32)})
    response = await runtime.infer(request, RequestContext("test", "infer"))
    return float(response.outputs["y"][0])


async def test_a_contributed_model_is_served_beside_the_folders(tmp_path: Path) -> None:
    root, cache = tmp_path / "repo", tmp_path / "cache"
    write_python_model(root, "folder", constant_model(1), CONFIG)
    (root / "packed.pack").write_text("7")
    s = server(root, cache)
    s.prepare()
    assert sorted(s.models.names()) == ["folder", "packed"]
    assert await answer(s, "packed") == 7
    assert await answer(s, "folder") == 1


async def test_a_folder_of_the_same_name_wins(tmp_path: Path) -> None:
    root, cache = tmp_path / "repo", tmp_path / "cache"
    write_python_model(root, "m", constant_model(1), CONFIG)
    (root / "m.pack").write_text("7")
    s = server(root, cache)
    s.prepare()
    assert s.models.names() == ["m"]
    assert await answer(s, "m") == 1


def test_overrides_apply_to_contributed_models(tmp_path: Path) -> None:
    root, cache = tmp_path / "repo", tmp_path / "cache"
    root.mkdir()
    (root / "packed.pack").write_text("7")
    s = server(root, cache, {"packed": {"max_batch_size": 4}})
    sources = s._scan(root, s.config.models, True)
    assert [(x.name, x.config.max_batch_size) for x in sources] == [("packed", 4)]
    # An override naming neither a folder nor a contributed model stays an error.
    with pytest.raises(ConfigError, match=r"models\.other: no such model"):
        server(root, cache, {"other": {"max_batch_size": 4}}).prepare()


async def test_a_contributed_model_whose_file_goes_is_unloaded(tmp_path: Path) -> None:
    root, cache = tmp_path / "repo", tmp_path / "cache"
    root.mkdir()
    (root / "packed.pack").write_text("7")
    s = server(root, cache)
    s.prepare()
    assert await answer(s, "packed") == 7
    (root / "packed.pack").unlink()
    assert await s.models.refresh(s._scan(root, {}, False), root)
    assert s.models.names() == []
