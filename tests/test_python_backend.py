"""The built-in ``python`` backend: what is particular to serving a ``model.py``.

Models are loaded through the plugin host and the model registry and called through
``Runtime.infer``, the path every wire protocol takes; the last tests check that user-code
errors reach a real tritonclient from a real server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from dl_inference import BackendError, InferRequest, ModelNotReady, RequestContext
from dl_inference.kernel.models import ModelRegistry, ModelState
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.kernel.runtime import Runtime
from dl_inference.testing import ServerProcess, write_python_model

FP32_IO = """
    inputs: [{name: x, datatype: FP32, shape: [-1]}]
    outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""


@pytest.fixture
def host() -> PluginHost:
    return PluginHost(entry_points=[]).load()


async def load(root: Path, host: PluginHost, *, strict: bool = False) -> Runtime:
    models = ModelRegistry(host)
    models.prepare(scan_repository(root))
    await models.load_all(strict=strict)
    return Runtime(host, models, access_log=False)


async def infer(runtime: Runtime, model: str, x: Any, **parameters: Any) -> dict[str, np.ndarray]:
    request = InferRequest(model, {"x": np.asarray(x, dtype=np.float32)}, parameters=parameters)
    ctx = RequestContext(protocol="test", method="infer")
    return (await runtime.infer(request, ctx)).outputs


def reason(runtime: Runtime, model: str) -> str:
    version = runtime.models.versions(model)[0]
    assert version.state is ModelState.UNAVAILABLE
    return version.reason


# -- finding the PythonModel subclass --------------------------------------------------------

NO_SUBCLASS = """
    import numpy as np

    class NotAModel:
        def predict(self, inputs):
            return inputs
"""

TWO_SUBCLASSES = """
    from dl_inference import PythonModel

    class First(PythonModel):
        pass

    class Second(PythonModel):
        pass
"""

GOOD = """
    from dl_inference import PythonModel

    class Double(PythonModel):
        def predict(self, inputs):
            return {"y": inputs["x"] * 2}
"""


@pytest.mark.parametrize(
    ("code", "found"),
    [(NO_SUBCLASS, "found none"), (TWO_SUBCLASSES, "found First, Second")],
    ids=["zero", "two"],
)
async def test_model_py_needs_exactly_one_subclass(
    tmp_path: Path, host: PluginHost, code: str, found: str
) -> None:
    write_python_model(tmp_path, "bad", code, FP32_IO)
    write_python_model(tmp_path, "good", GOOD, FP32_IO)

    runtime = await load(tmp_path, host)
    text = reason(runtime, "bad")
    assert "BackendError" in text and "exactly one subclass of dl_inference.PythonModel" in text
    assert found in text and "model.py" in text
    # The broken model does not take the others down, and asking for it says why.
    np.testing.assert_array_equal((await infer(runtime, "good", [1, 2]))["y"], [2, 4])
    with pytest.raises(ModelNotReady, match=found):
        await infer(runtime, "bad", [1])

    with pytest.raises(BackendError, match=f"model 'bad' version 1 failed to load.*{found}"):
        await load(tmp_path, host, strict=True)


async def test_subclass_imported_from_a_helper_is_not_counted(
    tmp_path: Path, host: PluginHost
) -> None:
    # A shared base class living beside model.py must not make "two subclasses".
    folder = write_python_model(
        tmp_path,
        "derived",
        """
        from base import Base

        class Derived(Base):
            def predict(self, inputs):
                return {"y": self.scale(inputs["x"])}
        """,
        FP32_IO,
    )
    (folder / "1" / "base.py").write_text(
        "from dl_inference import PythonModel\n\n"
        "class Base(PythonModel):\n"
        "    def scale(self, x):\n"
        "        return x * 10\n"
    )
    runtime = await load(tmp_path, host)
    np.testing.assert_array_equal((await infer(runtime, "derived", [1, 2]))["y"], [10, 20])


# -- helper modules -------------------------------------------------------------------------


def helper_model(root: Path, name: str, value: int) -> None:
    folder = write_python_model(
        root,
        name,
        """
        import helpers
        from tools.ops import offset

        from dl_inference import PythonModel

        class UsesHelpers(PythonModel):
            def predict(self, inputs):
                return {"y": offset(inputs["x"]) + helpers.VALUE}
        """,
        FP32_IO,
    )
    version = folder / "1"
    (version / "helpers.py").write_text(f"VALUE = {value}\n")
    (version / "tools").mkdir()
    (version / "tools" / "__init__.py").write_text("")
    (version / "tools" / "ops.py").write_text(f"def offset(x):\n    return x + {value * 100}\n")


async def test_helper_modules_beside_model_py_are_importable_per_model(
    tmp_path: Path, host: PluginHost
) -> None:
    # Two models whose helpers share module names must each get their own.
    helper_model(tmp_path, "first", 1)
    helper_model(tmp_path, "second", 2)
    runtime = await load(tmp_path, host)
    np.testing.assert_array_equal((await infer(runtime, "first", [0.5]))["y"], [101.5])
    np.testing.assert_array_equal((await infer(runtime, "second", [0.5]))["y"], [202.5])


# -- parameters and config ------------------------------------------------------------------


async def test_parameters_reach_predict_when_it_accepts_them(
    tmp_path: Path, host: PluginHost
) -> None:
    write_python_model(
        tmp_path,
        "with_params",
        """
        from dl_inference import PythonModel

        class Scaled(PythonModel):
            def predict(self, inputs, **parameters):
                return {"y": inputs["x"] * parameters.get("scale", 1)}
        """,
        FP32_IO,
    )
    write_python_model(tmp_path, "without_params", GOOD, FP32_IO)
    runtime = await load(tmp_path, host)
    np.testing.assert_array_equal(
        (await infer(runtime, "with_params", [1, 2], scale=5))["y"], [5, 10]
    )
    np.testing.assert_array_equal((await infer(runtime, "with_params", [1, 2]))["y"], [1, 2])
    # A predict without **parameters is still callable when the request carries some.
    np.testing.assert_array_equal(
        (await infer(runtime, "without_params", [1, 2], scale=5))["y"], [2, 4]
    )


async def test_model_sees_its_config_name_and_path(tmp_path: Path, host: PluginHost) -> None:
    write_python_model(
        tmp_path,
        "introspect",
        """
        import numpy as np

        from dl_inference import PythonModel

        class Introspect(PythonModel):
            def load(self):
                self.bias = float((self.path / "bias.txt").read_text())

            def predict(self, inputs):
                assert self.name == "introspect" and self.version == "1"
                offset = self.config["parameters"]["offset"] + self.config["max_batch_size"]
                return {"y": inputs["x"] + np.float32(self.bias + offset)}
        """,
        """
        max_batch_size: 2
        parameters: {offset: 10}
        inputs: [{name: x, datatype: FP32, shape: [-1]}]
        outputs: [{name: y, datatype: FP32, shape: [-1]}]
        """,
    )
    (tmp_path / "introspect" / "1" / "bias.txt").write_text("0.5")
    runtime = await load(tmp_path, host)
    np.testing.assert_array_equal((await infer(runtime, "introspect", [[1.0]]))["y"], [[13.5]])


# -- errors in user code --------------------------------------------------------------------


async def test_syntax_error_is_reported_with_file_and_line(
    tmp_path: Path, host: PluginHost
) -> None:
    write_python_model(
        tmp_path,
        "typo",
        """
        from dl_inference import PythonModel

        class Typo(PythonModel):
            def predict(self, inputs)
                return inputs
        """,
        FP32_IO,
    )
    write_python_model(tmp_path, "good", GOOD, FP32_IO)
    runtime = await load(tmp_path, host)
    text = reason(runtime, "typo")
    # Line 5 of the dedented file (line 1 is the blank line after the opening quotes).
    assert "SyntaxError" in text and "model.py:5" in text, text
    np.testing.assert_array_equal((await infer(runtime, "good", [3]))["y"], [6])
    with pytest.raises(BackendError, match=r"SyntaxError.*model\.py:5"):
        await load(tmp_path, host, strict=True)


async def test_error_in_load_names_the_line(tmp_path: Path, host: PluginHost) -> None:
    write_python_model(
        tmp_path,
        "broken_load",
        """
        from dl_inference import PythonModel

        class BrokenLoad(PythonModel):
            def load(self):
                raise FileNotFoundError("weights.bin is missing")
        """,
        FP32_IO,
    )
    runtime = await load(tmp_path, host)
    text = reason(runtime, "broken_load")
    assert "FileNotFoundError: weights.bin is missing (model.py:6)" in text, text


async def test_predict_returning_a_non_dict_is_backend_error(
    tmp_path: Path, host: PluginHost
) -> None:
    write_python_model(
        tmp_path,
        "returns_list",
        """
        from dl_inference import PythonModel

        class ReturnsList(PythonModel):
            def predict(self, inputs):
                if inputs["x"].size == 1:
                    return {"y": [7.0]}  # lists are fine inside the dict
                return [inputs["x"]]
        """,
        FP32_IO,
    )
    runtime = await load(tmp_path, host)
    with pytest.raises(BackendError) as caught:
        await infer(runtime, "returns_list", [1, 2])
    message = str(caught.value)
    assert "returns_list" in message and "returned list" in message
    assert "return a dict of output name -> numpy array" in message
    # The model is still up, and plain values inside the dict become arrays.
    y = (await infer(runtime, "returns_list", [1]))["y"]
    assert isinstance(y, np.ndarray)
    np.testing.assert_array_equal(y, [7.0])


async def test_exception_in_predict_is_backend_error_with_location(
    tmp_path: Path, host: PluginHost
) -> None:
    write_python_model(
        tmp_path,
        "raises",
        """
        from dl_inference import PythonModel

        class Raises(PythonModel):
            def predict(self, inputs):
                if inputs["x"][0] < 0:
                    raise ValueError("x must be non-negative")
                return {"y": inputs["x"]}
        """,
        FP32_IO,
    )
    runtime = await load(tmp_path, host)
    with pytest.raises(BackendError, match=r"ValueError: x must be non-negative \(model.py:7\)"):
        await infer(runtime, "raises", [-1])
    np.testing.assert_array_equal((await infer(runtime, "raises", [4]))["y"], [4])


async def test_unload_reaches_the_model(tmp_path: Path, host: PluginHost) -> None:
    marker = tmp_path / "unloaded.txt"
    write_python_model(
        tmp_path / "repo",
        "tracked",
        f"""
        from pathlib import Path

        from dl_inference import PythonModel

        class Tracked(PythonModel):
            def predict(self, inputs):
                return {{"y": inputs["x"]}}

            def unload(self):
                Path({str(marker)!r}).write_text("bye")
        """,
        FP32_IO,
    )
    runtime = await load(tmp_path / "repo", host)
    await runtime.models.unload_all()
    assert marker.read_text() == "bye"


# -- over the wire ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wire_client(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[grpcclient.InferenceServerClient]:
    """A real server with a good model, one with a syntax error and one that misbehaves."""
    root = tmp_path_factory.mktemp("wire")
    write_python_model(root, "good", GOOD, FP32_IO)
    write_python_model(root, "typo", "from x import (\n", FP32_IO)
    write_python_model(
        root,
        "misbehaves",
        """
        from dl_inference import PythonModel

        class Misbehaves(PythonModel):
            def predict(self, inputs):
                if inputs["x"][0] < 0:
                    raise ValueError("x must be non-negative")
                return [inputs["x"]]
        """,
        FP32_IO,
    )
    with (
        ServerProcess(["--model-repository", str(root)]) as server,
        grpcclient.InferenceServerClient(server.grpc_address) as client,
    ):
        yield client


def wire_infer(client: grpcclient.InferenceServerClient, model: str, x: list[float]) -> np.ndarray:
    array = np.asarray(x, dtype=np.float32)
    tensor = grpcclient.InferInput("x", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor]).as_numpy("y")


@pytest.mark.parametrize(
    ("model", "x", "status", "text"),
    [
        ("typo", [1.0], "StatusCode.UNAVAILABLE", "model.py:1"),
        ("misbehaves", [-1.0], "StatusCode.INTERNAL", "ValueError: x must be non-negative"),
        ("misbehaves", [1.0], "StatusCode.INTERNAL", "returned list"),
    ],
    ids=["syntax-error", "raises", "non-dict"],
)
def test_user_code_errors_reach_the_client_and_the_server_keeps_serving(
    wire_client: grpcclient.InferenceServerClient,
    model: str,
    x: list[float],
    status: str,
    text: str,
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        wire_infer(wire_client, model, x)
    assert caught.value.status() == status
    assert text in caught.value.message()
    np.testing.assert_array_equal(wire_infer(wire_client, "good", [1.5, 2.0]), [3.0, 4.0])
