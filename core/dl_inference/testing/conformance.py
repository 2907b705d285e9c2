"""The backend conformance suite: one pytest test base that every backend plugin runs.

A backend plugin proves it fits the kernel by subclassing :class:`BackendConformance` in
one of its test modules and saying how to write a model of its kind. The suite then
finds the backend through the plugin registry (entry points, as the server does), loads
a repository of generated models through :class:`~dl_inference.kernel.models.ModelRegistry`,
and calls them through :meth:`dl_inference.RuntimeView.infer`, exactly the path a request
takes after a wire protocol decoded it. It checks:

- the backend is registered under its name by a plugin that loaded cleanly;
- ``load()`` works in isolation and through the model registry; ``can_load`` recognises
  the model files (when the backend declares ``model_files``);
- metadata (``inputs()`` / ``outputs()``) agrees with the model's config.yaml;
- prediction for every datatype in ``supported_datatypes``, batched
  (``max_batch_size > 0``) and not, against a numpy reference;
- bad input (wrong datatype, wrong shape, missing or unknown input, unknown requested
  output) is :class:`~dl_inference.InvalidInput` and the model keeps serving;
- a model that raises becomes :class:`~dl_inference.BackendError` carrying its message;
- an unknown key in the model config is a :class:`~dl_inference.ConfigError`;
- ``unload()`` releases the model and it stops serving.

The models are deliberately trivial so that any framework can express them (see
:class:`ModelSpec`): ``OUTPUT0 = INPUT0 + 1`` for numeric datatypes and
``OUTPUT0 = INPUT0`` for ``BOOL`` and ``BYTES``. The suite writes each model's
``config.yaml`` itself; :meth:`BackendConformance.make_model` only writes the version
folder ``<root>/<spec.name>/1/``.

Example (a plugin's ``tests/test_conformance.py``)::

    from pathlib import Path

    from dl_inference.testing import BackendConformance, ModelSpec


    class TestScaleConformance(BackendConformance):
        backend_name = "mybackend"
        supported_datatypes = ("FP32", "INT64")

        def make_model(self, root: Path, spec: ModelSpec) -> None:
            folder = root / spec.name / "1"
            folder.mkdir(parents=True)
            ...  # save a model computing spec.reference(x) from spec.input_name
                 # into spec.output_name, raising spec.fail_with when it is set

The suite needs no test framework plugin beyond pytest (each loaded repository has one
event loop of its own, as the server has), and imports no ML framework.
"""

from __future__ import annotations

import asyncio
import importlib.metadata as md
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pytest
import yaml

from dl_inference.kernel.models import ModelRegistry, ModelState
from dl_inference.kernel.plugins import PluginHost
from dl_inference.kernel.repository import scan_repository
from dl_inference.kernel.runtime import Runtime
from dl_inference.spi.backend import Backend, BackendSettings
from dl_inference.spi.datatypes import DATATYPES, from_numpy_dtype, to_numpy_dtype
from dl_inference.spi.errors import BackendError, ConfigError, DlInferenceError, InvalidInput
from dl_inference.spi.types import InferRequest, InferResponse, RequestContext, TensorSpec

__all__ = ["BackendConformance", "ConformanceEnv", "ModelSpec", "load_repository"]

T = TypeVar("T")

# Datatypes whose conformance model is the identity: "+ 1" means nothing for them.
IDENTITY_DATATYPES = frozenset({"BOOL", "BYTES"})

# Shapes every backend must serve: a variable dimension in both, and the batch dimension
# (not written in the config, as in Triton) for batched models.
NON_BATCH_SHAPE: tuple[int, ...] = (2, -1)
BATCH_SHAPE: tuple[int, ...] = (3,)
MAX_BATCH_SIZE = 8

FAIL_MESSAGE = "conformance-model-failure-7d1c: the model raised on purpose"


@dataclass(frozen=True)
class ModelSpec:
    """One model the suite asks a backend to write.

    ``shape`` leaves out the batch dimension when ``max_batch_size > 0`` (Triton's rule);
    ``-1`` is a variable dimension. The model reads ``input_name`` and returns
    ``output_name`` holding :meth:`reference` of its input, same datatype and shape. When
    ``fail_with`` is set the model must instead raise an error whose message contains it.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    max_batch_size: int = 0
    input_name: str = "INPUT0"
    output_name: str = "OUTPUT0"
    fail_with: str | None = None

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    @property
    def operation(self) -> str:
        """``"add_one"`` for numeric datatypes, ``"identity"`` for BOOL and BYTES."""
        return "identity" if self.datatype in IDENTITY_DATATYPES else "add_one"

    @property
    def numpy_dtype(self) -> np.dtype:
        return to_numpy_dtype(self.datatype)

    @property
    def full_shape(self) -> tuple[int, ...]:
        """The shape requests carry, with ``-1`` for the batch dimension when batched."""
        return ((-1,) if self.batched else ()) + self.shape

    def reference(self, array: np.ndarray) -> np.ndarray:
        """What the model must return for ``array`` (numpy semantics, same dtype)."""
        if self.operation == "identity":
            return array.copy()
        return array + np.array(1, dtype=array.dtype)

    def sample_input(self, batch: int = 1, variable: int = 3) -> np.ndarray:
        """A deterministic input: ``batch`` rows when batched, ``variable`` for each -1."""
        shape = ((batch,) if self.batched else ()) + tuple(
            variable if dim == -1 else dim for dim in self.shape
        )
        return sample_array(self.datatype, shape)

    def config(self, backend: str) -> dict[str, Any]:
        """The kernel's part of ``config.yaml`` for this model."""
        tensor = {"datatype": self.datatype, "shape": list(self.shape)}
        return {
            "backend": backend,
            "max_batch_size": self.max_batch_size,
            "inputs": [{"name": self.input_name, **tensor}],
            "outputs": [{"name": self.output_name, **tensor}],
        }


def sample_array(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Values that survive ``+ 1`` in every datatype; negatives for signed types, and
    empty / non-UTF-8 strings for BYTES so a backend cannot get away with text decoding."""
    count = int(np.prod(shape)) if shape else 1
    steps = np.arange(count)
    if datatype == "BYTES":
        values = [b"", b"\x00\xfe\xff", "\u00e9t\u00e9".encode()] + [
            b"item-%d" % i for i in range(3, count)
        ]
        out = np.empty(count, dtype=np.object_)
        out[:] = values[:count]
        return out.reshape(shape)
    if datatype == "BOOL":
        return (steps % 3 == 0).reshape(shape)
    dtype = to_numpy_dtype(datatype)
    if dtype.kind == "f":
        values = steps * 0.5 - 3.0
    elif dtype.kind == "i":
        values = steps % 50 - 20
    else:
        values = steps % 50 + 7
    return values.astype(dtype).reshape(shape)


@dataclass
class ConformanceEnv:
    """The loaded repository a :class:`BackendConformance` class tests against.

    ``loop`` is the one event loop everything runs on: batchers and executors bind to
    the loop that first used them, as in the server, so never ``asyncio.run`` beside it.
    """

    root: Path
    host: PluginHost
    models: ModelRegistry
    runtime: Runtime
    loop: asyncio.Runner
    specs: dict[str, ModelSpec] = field(default_factory=dict)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` to completion on this repository's event loop."""
        return self.loop.run(coroutine)

    def close(self) -> None:
        """Unload every model, then close the event loop."""
        try:
            self.run(self.models.unload_all())
        finally:
            self.loop.close()

    def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        *,
        parameters: dict[str, Any] | None = None,
        outputs: list[str] | None = None,
    ) -> InferResponse:
        """One request through ``Runtime.infer`` (validation, executor, output selection)."""
        request = InferRequest(
            model_name=model, inputs=inputs, parameters=parameters or {}, outputs=outputs
        )
        ctx = RequestContext(protocol="conformance", method="infer")
        return self.run(self.runtime.infer(request, ctx))


def load_repository(root: Path, host: PluginHost | None = None) -> ConformanceEnv:
    """Scan ``root``, choose backends, load every model (failures stay UNAVAILABLE).

    ``host``: the installed plugins, as the server loads them, when not given. The
    models then answer :meth:`ConformanceEnv.infer` as a server would after decoding,
    processor.py hooks included; call :meth:`ConformanceEnv.close` when done.
    """
    host = host if host is not None else PluginHost().load()
    loop = asyncio.Runner()
    models = ModelRegistry(host)
    models.prepare(scan_repository(root))
    loop.run(models.load_all())
    runtime = Runtime(host, models, access_log=False)
    return ConformanceEnv(root=root, host=host, models=models, runtime=runtime, loop=loop)


def spec_name(datatype: str, batched: bool) -> str:
    return f"{datatype.lower()}_{'batch' if batched else 'nobatch'}"


class BackendConformance:
    """Subclass as ``Test<Something>`` and set the attributes below; pytest does the rest.

    Required: ``backend_name`` (the name the backend registers), ``supported_datatypes``
    (V2 names; each one is tested batched and not) and :meth:`make_model`. Optional:
    :meth:`model_options` (backend-specific config.yaml keys), ``entry_points`` (``None``
    = the installed ones, as the server finds them), ``supports_failing_model``.
    """

    backend_name: ClassVar[str] = ""
    supported_datatypes: ClassVar[Sequence[str]] = ()
    entry_points: ClassVar[Sequence[md.EntryPoint] | None] = None
    supports_failing_model: ClassVar[bool] = True

    # -- what a plugin provides ------------------------------------------------------------

    def make_model(self, root: Path, spec: ModelSpec) -> None:
        """Write ``<root>/<spec.name>/1/<model files>`` computing ``spec.reference``."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_model()")

    def model_options(self, spec: ModelSpec) -> dict[str, Any]:
        """Backend-specific keys for the model's config.yaml (validated by its Settings)."""
        return {}

    def make_plugin_host(self) -> PluginHost:
        """The plugins as the server loads them (override to pass allow/block lists)."""
        return PluginHost(entry_points=self.entry_points).load()

    # -- how the suite builds its repository -----------------------------------------------

    def conformance_specs(self) -> list[ModelSpec]:
        unknown = sorted(set(self.supported_datatypes) - set(DATATYPES))
        if unknown or not self.supported_datatypes:
            raise AssertionError(
                f"{type(self).__name__}.supported_datatypes must list V2 datatypes "
                f"({', '.join(DATATYPES)}); unknown: {unknown or 'none given'}"
            )
        specs = []
        for datatype in self.supported_datatypes:
            specs.append(ModelSpec(spec_name(datatype, False), datatype, NON_BATCH_SHAPE))
            specs.append(
                ModelSpec(spec_name(datatype, True), datatype, BATCH_SHAPE, MAX_BATCH_SIZE)
            )
        if self.supports_failing_model:
            specs.append(ModelSpec("raises", self._plain_datatype(), (-1,), fail_with=FAIL_MESSAGE))
        return specs

    def write_model(self, root: Path, spec: ModelSpec) -> None:
        """The plugin's version folder plus the config.yaml the suite controls."""
        self.make_model(root, spec)
        version = root / spec.name / "1"
        if not version.is_dir():
            raise AssertionError(f"make_model() did not create {version}")
        config = spec.config(self.backend_name) | self.model_options(spec)
        (root / spec.name / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")

    def _plain_datatype(self) -> str:
        for preferred in ("FP32", "INT64", "INT32", "FP64"):
            if preferred in self.supported_datatypes:
                return preferred
        return next(d for d in self.supported_datatypes if d not in IDENTITY_DATATYPES)

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrize ``datatype`` over this backend's supported datatypes."""
        if "datatype" in metafunc.fixturenames:
            metafunc.parametrize("datatype", list(self.supported_datatypes))

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_env(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConformanceEnv]:
        """Every conformance model, loaded once per test class."""
        suite = cls()
        root = tmp_path_factory.mktemp(f"conformance-{cls.backend_name}")
        specs = suite.conformance_specs()
        for spec in specs:
            suite.write_model(root, spec)
        env = load_repository(root, suite.make_plugin_host())
        env.specs = {spec.name: spec for spec in specs}
        yield env
        env.close()

    # -- registration and loading ----------------------------------------------------------

    def test_backend_is_registered_by_a_loaded_plugin(self) -> None:
        host = self.make_plugin_host()
        cls = host.backend(self.backend_name)
        assert issubclass(cls, Backend), f"{cls!r} is not a dl_inference.Backend"
        assert cls.name == self.backend_name
        assert issubclass(cls.Settings, BackendSettings)
        owner = host.backends.owner(self.backend_name)
        status = {p.name: p for p in host.plugins}[owner]
        assert status.status == "loaded", status.as_dict()
        assert self.backend_name in status.registers.get("backends", []), status.as_dict()

    def test_models_load(self, conformance_env: ConformanceEnv) -> None:
        failed = {
            v.name: f"{v.state.value}: {v.reason}"
            for name in conformance_env.models.names()
            for v in conformance_env.models.versions(name)
            if not v.ready
        }
        assert not failed, f"models failed to load: {failed}"
        assert sorted(conformance_env.models.names()) == sorted(conformance_env.specs)
        for name in conformance_env.models.names():
            assert conformance_env.models.resolve(name).backend_name == self.backend_name

    def test_can_load_recognises_model_files(
        self, conformance_env: ConformanceEnv, tmp_path: Path
    ) -> None:
        cls = conformance_env.host.backend(self.backend_name)
        if not cls.model_files:
            pytest.skip(f"backend {self.backend_name!r} declares no model_files")
        for name in conformance_env.specs:
            version = conformance_env.root / name / "1"
            assert cls.can_load(version), f"{cls.__name__}.can_load({version}) is False"
        assert not cls.can_load(tmp_path), "can_load() accepted an empty folder"

    def test_backend_alone(self, tmp_path: Path) -> None:
        """Constructed directly, as a plugin author's unit test would: load, predict, unload."""
        spec = ModelSpec("alone", self._plain_datatype(), NON_BATCH_SHAPE)
        self.write_model(tmp_path, spec)
        source = scan_repository(tmp_path)[0]
        cls = self.make_plugin_host().backend(self.backend_name)
        settings = cls.Settings.model_validate(source.config.backend_options)
        backend = cls(spec.name, "1", source.version_path(1), source.config, settings)
        backend.load()
        try:
            array = spec.sample_input()
            outputs = backend.predict({spec.input_name: array})
            assert_output(spec, outputs, array)
        finally:
            backend.unload()

    # -- metadata --------------------------------------------------------------------------

    @pytest.mark.parametrize("batched", [False, True], ids=["nobatch", "batch"])
    def test_metadata_matches_config(
        self, conformance_env: ConformanceEnv, datatype: str, batched: bool
    ) -> None:
        spec = conformance_env.specs[spec_name(datatype, batched)]
        metadata = conformance_env.runtime.model_metadata(spec.name)
        expected_in = [TensorSpec(spec.input_name, datatype, spec.full_shape)]
        expected_out = [TensorSpec(spec.output_name, datatype, spec.full_shape)]
        assert metadata.name == spec.name
        assert metadata.versions == ["1"]
        assert isinstance(metadata.platform, str) and metadata.platform
        assert [t.as_dict() for t in metadata.inputs] == [t.as_dict() for t in expected_in]
        assert [t.as_dict() for t in metadata.outputs] == [t.as_dict() for t in expected_out]

    # -- prediction ------------------------------------------------------------------------

    @pytest.mark.parametrize("batched", [False, True], ids=["nobatch", "batch"])
    def test_predict(self, conformance_env: ConformanceEnv, datatype: str, batched: bool) -> None:
        spec = conformance_env.specs[spec_name(datatype, batched)]
        # Two sizes per model: a backend that caches the first shape it saw fails here.
        sizes = [(1, 3), (5, 1)] if batched else [(1, 3), (1, 1)]
        for batch, variable in sizes:
            array = spec.sample_input(batch=batch, variable=variable)
            response = conformance_env.infer(spec.name, {spec.input_name: array})
            assert response.model_name == spec.name
            assert response.model_version == "1"
            assert_output(spec, response.outputs, array)

    def test_requested_output_is_returned(self, conformance_env: ConformanceEnv) -> None:
        spec = conformance_env.specs[spec_name(self._plain_datatype(), False)]
        array = spec.sample_input()
        response = conformance_env.infer(
            spec.name, {spec.input_name: array}, outputs=[spec.output_name]
        )
        assert list(response.outputs) == [spec.output_name]
        assert_output(spec, response.outputs, array)

    def test_concurrent_requests_keep_their_own_data(self, conformance_env: ConformanceEnv) -> None:
        spec = conformance_env.specs[spec_name(self._plain_datatype(), True)]
        arrays = [spec.sample_input(batch=1) + np.array(i, spec.numpy_dtype) for i in range(6)]

        async def run_all() -> list[InferResponse]:
            return await asyncio.gather(
                *(
                    conformance_env.runtime.infer(
                        InferRequest(spec.name, {spec.input_name: a}),
                        RequestContext(protocol="conformance", method="infer"),
                    )
                    for a in arrays
                )
            )

        for array, response in zip(arrays, conformance_env.run(run_all()), strict=True):
            assert_output(spec, response.outputs, array)

    # -- bad input -------------------------------------------------------------------------

    def test_wrong_datatype_is_invalid_input(self, conformance_env: ConformanceEnv) -> None:
        spec = conformance_env.specs[spec_name(self._plain_datatype(), False)]
        wrong = "FP64" if spec.datatype != "FP64" else "INT32"
        bad = spec.sample_input().astype(to_numpy_dtype(wrong))
        with pytest.raises(InvalidInput) as caught:
            conformance_env.infer(spec.name, {spec.input_name: bad})
        message = str(caught.value)
        assert spec.input_name in message and wrong in message and spec.datatype in message
        self._still_serves(conformance_env, spec)

    @pytest.mark.parametrize("batched", [False, True], ids=["nobatch", "batch"])
    def test_wrong_shape_is_invalid_input(
        self, conformance_env: ConformanceEnv, batched: bool
    ) -> None:
        spec = conformance_env.specs[spec_name(self._plain_datatype(), batched)]
        good = spec.sample_input(batch=2)
        # Fixed dimension wrong, and the rank wrong (batched: the batch dimension left out).
        wrong_dim = np.concatenate([good, good], axis=1 if batched else 0)
        wrong_rank = good[0]
        for bad in (wrong_dim, wrong_rank):
            with pytest.raises(InvalidInput) as caught:
                conformance_env.infer(spec.name, {spec.input_name: bad})
            message = str(caught.value)
            assert spec.input_name in message and "shape" in message, message
            assert str(list(bad.shape)) in message, message
        self._still_serves(conformance_env, spec)

    def test_missing_input_is_invalid_input(self, conformance_env: ConformanceEnv) -> None:
        spec = conformance_env.specs[spec_name(self._plain_datatype(), False)]
        with pytest.raises(InvalidInput) as caught:
            conformance_env.infer(spec.name, {})
        assert spec.input_name in str(caught.value)
        self._still_serves(conformance_env, spec)

    def test_unknown_input_is_invalid_input(self, conformance_env: ConformanceEnv) -> None:
        spec = conformance_env.specs[spec_name(self._plain_datatype(), False)]
        array = spec.sample_input()
        with pytest.raises(InvalidInput) as caught:
            conformance_env.infer(spec.name, {spec.input_name: array, "NOT_AN_INPUT": array})
        assert "NOT_AN_INPUT" in str(caught.value) and spec.input_name in str(caught.value)
        self._still_serves(conformance_env, spec)

    def test_unknown_requested_output_is_invalid_input(
        self, conformance_env: ConformanceEnv
    ) -> None:
        spec = conformance_env.specs[spec_name(self._plain_datatype(), False)]
        with pytest.raises(InvalidInput) as caught:
            conformance_env.infer(
                spec.name, {spec.input_name: spec.sample_input()}, outputs=["NOT_AN_OUTPUT"]
            )
        assert "NOT_AN_OUTPUT" in str(caught.value) and spec.output_name in str(caught.value)
        self._still_serves(conformance_env, spec)

    def test_model_that_raises_is_backend_error(self, conformance_env: ConformanceEnv) -> None:
        if not self.supports_failing_model:
            pytest.skip(f"{type(self).__name__}.supports_failing_model is False")
        spec = conformance_env.specs["raises"]
        for _ in range(2):  # the failure does not break the model either
            with pytest.raises(BackendError) as caught:
                conformance_env.infer(spec.name, {spec.input_name: spec.sample_input()})
            assert FAIL_MESSAGE in str(caught.value), str(caught.value)
            assert "raises" in str(caught.value), "the error should name the model"
        assert conformance_env.models.is_ready(spec.name)
        self._still_serves(conformance_env, conformance_env.specs[self._first_spec_name()])

    def test_unknown_config_key_is_config_error(self, tmp_path: Path) -> None:
        spec = ModelSpec("typo", self._plain_datatype(), NON_BATCH_SHAPE)
        self.write_model(tmp_path, spec)
        config = tmp_path / spec.name / "config.yaml"
        data = yaml.safe_load(config.read_text()) | {"not_an_option_xq": 1}
        config.write_text(yaml.safe_dump(data))
        models = ModelRegistry(self.make_plugin_host())
        with pytest.raises(ConfigError) as caught:
            models.prepare(scan_repository(tmp_path))
        assert "not_an_option_xq" in str(caught.value) and "unknown key" in str(caught.value)

    # -- unload ----------------------------------------------------------------------------

    def test_unload(self, tmp_path: Path) -> None:
        spec = ModelSpec("unloaded", self._plain_datatype(), NON_BATCH_SHAPE)
        self.write_model(tmp_path, spec)
        env = load_repository(tmp_path, self.make_plugin_host())
        try:
            self._still_serves(env, spec)
            version = env.models.resolve(spec.name)
            version.backend.unload()  # directly, so an exception surfaces (unload_all logs it)
            env.run(env.models.unload_all())
            assert version.state is ModelState.UNLOADING
            assert not env.models.is_ready(spec.name)
            with pytest.raises(DlInferenceError):
                env.infer(spec.name, {spec.input_name: spec.sample_input()})
        finally:
            env.close()

    # -- helpers ---------------------------------------------------------------------------

    def _first_spec_name(self) -> str:
        return spec_name(self._plain_datatype(), False)

    @staticmethod
    def _still_serves(env: ConformanceEnv, spec: ModelSpec) -> None:
        array = spec.sample_input()
        assert_output(spec, env.infer(spec.name, {spec.input_name: array}).outputs, array)


def assert_output(spec: ModelSpec, outputs: dict[str, np.ndarray], array: np.ndarray) -> None:
    """``outputs`` holds exactly ``spec.output_name`` = ``spec.reference(array)``."""
    assert isinstance(outputs, dict), f"predict returned {type(outputs).__name__}, not a dict"
    assert spec.output_name in outputs, f"no {spec.output_name!r} in outputs {list(outputs)}"
    got = np.asarray(outputs[spec.output_name])
    expected = spec.reference(array)
    assert got.shape == expected.shape, f"{spec.name}: shape {got.shape}, expected {expected.shape}"
    assert from_numpy_dtype(got.dtype) == spec.datatype, (
        f"{spec.name}: output datatype {from_numpy_dtype(got.dtype)} ({got.dtype}), "
        f"expected {spec.datatype}"
    )
    if spec.datatype == "BYTES":
        assert [bytes(v) for v in got.flat] == list(expected.flat), f"{spec.name}: {got!r}"
    else:
        np.testing.assert_array_equal(got, expected, err_msg=spec.name)
