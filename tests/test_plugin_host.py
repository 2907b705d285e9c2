"""Plugin discovery in-process, with hand-made entry points, plus the contract meta-tests.

The plugins are modules under ``tests/fixtures/plugins/``; the entry points that name
them come from a fake ``importlib.metadata.Distribution`` (so they carry a distribution
name and version, as installed ones do) or are constructed bare.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dl_inference
from dl_inference import Backend, BackendRegistry, ConfigError, PluginError
from dl_inference.kernel.plugins import PluginHost, PluginInfo
from dl_inference.spi import hookspecs

FIXTURES = Path(__file__).parent / "fixtures" / "plugins"


class FakeDistribution(md.Distribution):
    """An installed distribution as importlib.metadata sees it, without installing it."""

    def __init__(self, name: str, version: str, entry_points: dict[str, str]) -> None:
        self._metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
        self._entry_points = f"[{hookspecs.PROJECT}]\n{lines}"

    def read_text(self, filename: str) -> str | None:
        if filename in ("METADATA", "PKG-INFO"):
            return self._metadata
        if filename == "entry_points.txt":
            return self._entry_points
        return None

    def locate_file(self, path: Any) -> Path:
        return FIXTURES / str(path)


def plugin(
    name: str, target: str, dist: str | None = None, version: str = "1.2.3"
) -> md.EntryPoint:
    """The entry point ``name = target`` of distribution ``dist`` (default dl-inference-<name>)."""
    (entry_point,) = FakeDistribution(
        dist or f"dl-inference-{name}", version, {name: target}
    ).entry_points
    return entry_point


GOOD = plugin("good", "dli_fake_good")
OTHER = plugin("other", "dli_fake_other")
BROKEN = plugin("broken", "dli_fake_broken_import")


@pytest.fixture(autouse=True)
def fixture_plugins_importable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.syspath_prepend(str(FIXTURES))
    yield


def host(*entry_points: md.EntryPoint, **options: Any) -> PluginHost:
    """A fresh plugin host (its own pluggy manager) over exactly these entry points."""
    return PluginHost(entry_points=list(entry_points), **options).load()


def info(plugins: PluginHost, name: str) -> PluginInfo:
    return {p.name: p for p in plugins.plugins}[name]


# -- discovery -------------------------------------------------------------------------------


def test_good_plugins_load_and_report_what_they_register() -> None:
    plugins = host(GOOD, OTHER)
    assert plugins.backends.names() == ["ensemble", "fake_good", "python"]
    assert plugins.balancers.names() == ["fake_first"]
    assert plugins.backends.owner("fake_good") == "good"
    assert info(plugins, "good").as_dict() == {
        "name": "good",
        "distribution": "dl-inference-good",
        "version": "1.2.3",
        "status": "loaded",
        "error": "",
        "registers": {"backends": ["fake_good"]},
        "hooks": ["dli_on_request"],
    }
    assert info(plugins, "other").registers == {"balancers": ["fake_first"]}
    assert info(plugins, "dl_inference").registers["backends"] == ["ensemble", "python"]
    assert plugins.request_hook("dli_on_request") is not None
    assert plugins.request_hook("dli_on_error") is None


def test_bare_entry_point_without_distribution_loads() -> None:
    bare = md.EntryPoint(name="good", value="dli_fake_good", group=hookspecs.PROJECT)
    plugins = host(bare)
    assert "fake_good" in plugins.backends
    assert info(plugins, "good").status == "loaded"


def test_plugin_that_fails_to_import_is_skipped_and_reported() -> None:
    plugins = host(BROKEN, GOOD)
    broken = info(plugins, "broken")
    assert broken.status == "failed"
    assert broken.distribution == "dl-inference-broken"
    assert "ModuleNotFoundError" in broken.error
    assert "dli_framework_that_is_not_installed" in broken.error
    assert broken.registers == {}
    # The others still load.
    assert info(plugins, "good").status == "loaded"
    assert plugins.backends.names() == ["ensemble", "fake_good", "python"]


def test_strict_mode_raises_naming_plugin_and_pip_package() -> None:
    with pytest.raises(PluginError) as caught:
        host(GOOD, BROKEN, strict=True)
    message = str(caught.value)
    assert "'broken'" in message and "pip package dl-inference-broken" in message
    assert "dli_framework_that_is_not_installed" in message
    assert "plugins.strict" in message


def test_misspelled_hook_is_rejected() -> None:
    misspelled = plugin("typo", "dli_fake_misspelled")
    plugins = host(misspelled, GOOD)
    typo = info(plugins, "typo")
    assert typo.status == "failed"
    assert "unknown hook" in typo.error and "dli_register_backend" in typo.error
    assert info(plugins, "good").status == "loaded"
    with pytest.raises(PluginError, match="dli_register_backend"):
        host(misspelled, strict=True)


def test_hook_with_unknown_argument_is_rejected() -> None:
    plugins = host(plugin("bad_args", "dli_fake_bad_args"))
    failed = info(plugins, "bad_args")
    assert failed.status == "failed" and "context" in failed.error
    assert plugins.request_hook("dli_on_request") is None


def test_duplicate_backend_name_names_both_plugins() -> None:
    # Entry points load in name order, so "good" registers first and "second" clashes.
    plugins = host(plugin("second", "dli_fake_duplicate"), GOOD)
    dup = info(plugins, "second")
    assert dup.status == "failed"
    assert "'fake_good'" in dup.error and "'good'" in dup.error and "'second'" in dup.error
    # The first registration stands.
    assert plugins.backends.owner("fake_good") == "good"
    assert plugins.backends.get("fake_good").__module__ == "dli_fake_good"


def test_plugin_cannot_take_a_builtin_name() -> None:
    shadow = plugin("shadow", "dli_fake_shadow_python:PLUGIN")
    plugins = host(shadow)
    failed = info(plugins, "shadow")
    assert failed.status == "failed"
    assert "'python'" in failed.error and "'dl_inference'" in failed.error
    assert plugins.backends.owner("python") == "dl_inference"


def test_registering_a_non_backend_class_is_plugin_error() -> None:
    plugins = host(plugin("notbackend", "dli_fake_not_backend"))
    failed = info(plugins, "notbackend")
    assert failed.status == "failed"
    assert failed.error.startswith("PluginError:")
    assert "NotABackend" in failed.error and "dl_inference.Backend" in failed.error
    assert "not_a_backend" not in plugins.backends


def test_registry_rejects_wrong_types_and_nameless_classes() -> None:
    registry = BackendRegistry()
    registry.current_plugin = "mine"
    with pytest.raises(
        PluginError, match=r"plugin 'mine'.*not a subclass of dl_inference\.Backend"
    ):
        registry.add(object)  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="not a subclass"):
        registry.add(lambda: None)  # type: ignore[arg-type]

    class Nameless(Backend):
        """No ``name``: cannot be chosen from config."""

        def predict(self, inputs: dict[str, Any], **parameters: Any) -> dict[str, Any]:
            return {}

    with pytest.raises(PluginError, match="Nameless needs a non-empty `name`"):
        registry.add(Nameless)
    assert len(registry) == 0


def test_block_list_skips_a_plugin_without_importing_it() -> None:
    plugins = host(GOOD, BROKEN, block=["broken", "good"])
    for name in ("broken", "good"):
        blocked = info(plugins, name)
        assert blocked.status == "blocked", blocked
        assert "blocked" in blocked.error
    assert plugins.backends.names() == ["ensemble", "python"]


def test_allow_list_loads_only_the_named_plugins() -> None:
    plugins = host(GOOD, OTHER, BROKEN, allow=["other"])
    assert info(plugins, "other").status == "loaded"
    assert info(plugins, "good").status == "blocked"
    assert info(plugins, "broken").status == "blocked"
    assert plugins.balancers.names() == ["fake_first"]
    assert plugins.backends.names() == ["ensemble", "python"]  # built-ins are never blocked


def test_plugin_built_for_a_newer_contract_is_refused_with_upgrade_hint() -> None:
    plugins = host(plugin("future", "dli_fake_future"))
    failed = info(plugins, "future")
    assert failed.status == "failed"
    assert "hook contract 2.0" in failed.error
    assert f"this kernel speaks {dl_inference.HOOKSPEC_VERSION}" in failed.error
    assert "pip install -U dl-inference" in failed.error
    assert "future" not in plugins.backends


def test_plugin_built_for_an_older_contract_is_told_to_upgrade_itself() -> None:
    plugins = host(plugin("old", "dli_fake_old"))
    failed = info(plugins, "old")
    assert failed.status == "failed"
    assert "hook contract 0.9" in failed.error
    assert "pip install -U dl-inference-old" in failed.error


def test_plugin_built_for_a_newer_minor_contract_loads() -> None:
    plugins = host(plugin("compatible", "dli_fake_compatible"))
    assert info(plugins, "compatible").status == "loaded"
    assert "compatible" in plugins.backends


def test_partial_registrations_are_rolled_back() -> None:
    plugins = host(plugin("partial", "dli_fake_partial"), GOOD)
    failed = info(plugins, "partial")
    assert failed.status == "failed"
    assert "RuntimeError: protocol setup failed: port table missing" in failed.error
    assert "partial" not in plugins.backends
    assert plugins.backends.names() == ["ensemble", "fake_good", "python"]
    assert plugins.protocols.names() == ["v2"]
    # Its per-request hook is gone with it; the good plugin's stays.
    impls = plugins.pm.hook.dli_on_request.get_hookimpls()
    assert [impl.plugin_name for impl in impls] == ["good"]
    assert plugins.pm.get_plugin("partial") is None


# -- missing capabilities ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name", "package"),
    [
        ("backend", "pytorch", "dl-inference-pytorch"),
        ("backend", "tensorflow", "dl-inference-tensorflow"),
        ("backend", "onnx", "dl-inference-onnx"),
        ("balancer", "dynamic_weighted_round_robin", "dl-inference-balancers"),
    ],
)
def test_missing_capability_names_the_pip_package(kind: str, name: str, package: str) -> None:
    plugins = host(GOOD)
    with pytest.raises(PluginError) as caught:
        getattr(plugins, kind)(name)
    message = str(caught.value)
    assert f"{kind} {name!r}" in message and f"pip install {package}" in message
    if kind == "backend":
        assert "available: ensemble, fake_good, python" in message


def test_missing_unknown_backend_suggests_checking_the_name() -> None:
    message = host().missing_message("backend", "pytorchh", ["python"])
    assert "'pytorchh'" in message and "check the spelling" in message
    assert "pip install" not in message


def test_missing_capability_mentions_an_installed_plugin_that_failed() -> None:
    broken_pytorch = plugin("pytorch", "dli_fake_broken_import", dist="dl-inference-pytorch")
    plugins = host(broken_pytorch)
    with pytest.raises(PluginError) as caught:
        plugins.backend("pytorch")
    message = str(caught.value)
    assert "pip install dl-inference-pytorch" in message
    assert "installed but failed to load" in message
    assert "dli_framework_that_is_not_installed" in message


# -- the contract, pinned ---------------------------------------------------------------------

PUBLIC_SURFACE = [
    "DATATYPES",
    "HOOKSPEC_VERSION",
    "MAX_JSON_DEPTH",
    "MAX_TENSOR_ELEMENTS",
    "MAX_TENSOR_RANK",
    "AttemptTrace",
    "Backend",
    "BackendError",
    "BackendRegistry",
    "BackendSettings",
    "Balancer",
    "BalancerRegistry",
    "BatchStatistics",
    "BenchRequest",
    "BenchTransport",
    "Call",
    "CallPath",
    "ConfigError",
    "Converter",
    "ConverterRegistry",
    "DeadlineExceeded",
    "Decision",
    "DlInferenceError",
    "ExecutionTiming",
    "ForwardTrace",
    "HttpRequest",
    "InferRequest",
    "InferResponse",
    "InvalidInput",
    "ModelConfig",
    "ModelControl",
    "ModelMetadata",
    "ModelNotFound",
    "ModelNotReady",
    "ModelRunner",
    "ModelVersionInfo",
    "NodeView",
    "Outcome",
    "PayloadTooLarge",
    "PermissionDenied",
    "PluginError",
    "ProcessorAdapter",
    "Protocol",
    "ProtocolRegistry",
    "PythonModel",
    "RequestContext",
    "ResourceExhausted",
    "RoutingKeyReader",
    "RuntimeView",
    "StatisticDuration",
    "StepExecution",
    "TensorConfig",
    "TensorSpec",
    "Unauthenticated",
    "Unavailable",
    "VersionPolicy",
    "VersionStatistics",
    "__version__",
    "array_from_json",
    "check_raw_size",
    "check_tensor_shape",
    "check_value_count",
    "count_parameter",
    "describe_errors",
    "from_numpy_dtype",
    "grpc_code",
    "hookimpl",
    "http_status",
    "import_user_file",
    "install_hint",
    "isolated_imports",
    "json_datatype",
    "json_error_body",
    "json_leaves",
    "narrow_array",
    "public_message",
    "read_body",
    "read_config_pbtxt",
    "read_json",
    "rename_proto_types",
    "task_id_of",
    "to_numpy_dtype",
    "utf8_bytes",
    "wire",
    "without_task_id",
]

# name -> (signature, firstresult). Changing a hook is a contract change: bump
# HOOKSPEC_VERSION (the major when existing plugins would break) and update this table.
HOOKSPECS = {
    "dli_authorize": ("(ctx: 'RequestContext') -> 'Decision | None'", True),
    "dli_configured_models": ("() -> 'list[tuple[str, Path]] | None'", False),
    "dli_configure": (
        "(settings: 'dict[str, Any]', config_dir: 'Path') -> 'dict[str, tuple[Any, str]] | None'",
        False,
    ),
    "dli_gateway_call": ("(ctx: 'RequestContext') -> 'ForwardTrace | None'", True),
    "dli_on_error": ("(ctx: 'RequestContext', error: 'BaseException') -> 'None'", False),
    "dli_on_request": ("(ctx: 'RequestContext') -> 'None'", False),
    "dli_on_response": ("(ctx: 'RequestContext') -> 'None'", False),
    "dli_register_backends": ("(registry: 'BackendRegistry') -> 'None'", False),
    "dli_register_balancers": ("(registry: 'BalancerRegistry') -> 'None'", False),
    "dli_register_converters": ("(registry: 'ConverterRegistry') -> 'None'", False),
    "dli_register_protocols": ("(registry: 'ProtocolRegistry') -> 'None'", False),
    "dli_repository_models": ("(root: 'Path') -> 'list[tuple[str, Path]] | None'", False),
    "dli_server_started": ("(server: 'object') -> 'None'", False),
    "dli_server_stopping": ("(server: 'object') -> 'None'", False),
}


def test_public_surface_matches_its_snapshot() -> None:
    assert dl_inference.__all__ == PUBLIC_SURFACE
    for name in PUBLIC_SURFACE:
        assert hasattr(dl_inference, name), name
    assert dl_inference.HOOKSPEC_VERSION == "1.9"


def test_hookspecs_are_documented_and_match_their_snapshot() -> None:
    marker = f"{hookspecs.PROJECT}_spec"
    specs = {
        name: function
        for name, function in vars(hookspecs).items()
        if inspect.isfunction(function) and hasattr(function, marker)
    }
    assert all(name.startswith("dli_") for name in specs), sorted(specs)
    found = {
        name: (str(inspect.signature(function)), getattr(function, marker)["firstresult"])
        for name, function in specs.items()
    }
    assert found == HOOKSPECS
    for name, function in specs.items():
        doc = inspect.getdoc(function) or ""
        assert len(doc) > 20, f"hookspec {name} needs a docstring saying when it fires"
    # The plugin manager knows exactly these hooks.
    plugins = host()
    assert sorted(n for n in vars(plugins.pm.hook) if n.startswith("dli_")) == sorted(HOOKSPECS)


def test_listener_settings_from_two_plugins_clash_and_unknown_keys_are_refused() -> None:
    class First:
        @dl_inference.hookimpl
        def dli_configure(self) -> dict[str, tuple[Any, str]]:
            return {"server.http.port": (8080, "a.properties: inference_address")}

    class Second:
        @dl_inference.hookimpl
        def dli_configure(self) -> dict[str, tuple[Any, str]]:
            return {"server.http.port": (9090, "b.conf: rest_api_port")}

    class Wrong:
        @dl_inference.hookimpl
        def dli_configure(self) -> dict[str, tuple[Any, str]]:
            return {"server.tls": ({}, "c.conf: tls")}

    plugins = host()
    plugins.pm.register(First(), name="first")
    plugins.configure({})
    assert plugins.listener_settings == {
        "server.http.port": (8080, "a.properties: inference_address")
    }
    plugins.pm.register(Second(), name="second")
    with pytest.raises(ConfigError, match=r"server.http.port: given by .* and by "):
        plugins.configure({})
    plugins.pm.unregister(name="second")
    plugins.pm.register(Wrong(), name="wrong")
    with pytest.raises(PluginError, match=r"plugin wrong: dli_configure returned 'server\.tls'"):
        plugins.configure({})
